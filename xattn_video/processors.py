"""diffusers host adapter: attention processors that hand HunyuanVideo's joint video+text attention to the runtime.

The processor does what diffusers' ``HunyuanVideoAttnProcessor2_0`` does around the attention (projections,
QK norms, RoPE on the video tokens, text after video) and supplies the runtime the layer index and the
tensors in ``[B, H, N, D]``; the runtime decides dense or sparse (``xattn_video.runtime``). Steps come from
the ``"xattn_video"`` hook (``xattn_video.hooks``).

Two ways in::

    from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=5))  # processors + hook
    frames = pipe(prompt="a red fox in the snow", num_inference_steps=50).frames[0]
    print(runtime.density_table())
    remove_xattention(pipe)                                                              # stock processors back

    # or by hand:
    runtime = XAttentionRuntime(config)
    pipe.transformer.set_attn_processor(xattention_processors(pipe.transformer, config, runtime))
    attach_step_hook(pipe.transformer, runtime)           # without it the step is unknown (see unknown_step)
"""

from __future__ import annotations

from typing import Any

import torch

from .config import XAttentionConfig
from .runtime import MaskSource, XAttentionRuntime
from .runtime.traced import attend, runtime_key


class XAttentionProcessor:
    """Drop-in for diffusers' ``HunyuanVideoAttnProcessor2_0`` (double- and single-stream blocks).

    Same projections, QK norms and RoPE (video tokens only); text tokens follow the video tokens; the
    attention itself goes to ``runtime.attend`` with the key-padding mask diffusers passes. Called on another
    kind of attention (the token refiner), it defers to diffusers' standard processor.

    Args:
        config: the XAttention settings (ignored when ``runtime`` is given: the runtime's are used).
        runtime: shared by all layers of one model; a new one when None.
        layer: this block's index (double blocks first, then single); None: numbered in first-call order.
        name: the layer's name for reports.
        mask_source: for a new runtime, see ``XAttentionRuntime``.

    Example::

        proc = XAttentionProcessor(XAttentionConfig(threshold=0.9, warmup_steps=0))
        transformer.set_attn_processor(proc)
    """

    def __init__(self, config: XAttentionConfig | None = None, runtime: XAttentionRuntime | None = None,
                 layer: int | None = None, name: str | None = None, *, mask_source: MaskSource | None = None) -> None:
        if runtime is not None and mask_source is not None:
            raise ValueError("give mask_source to the runtime (XAttentionRuntime(config, mask_source=...)), "
                             "not to a processor that shares one")
        self.runtime = runtime if runtime is not None else XAttentionRuntime(config, mask_source=mask_source)
        self._key = runtime_key(self.runtime)  # torch.compile calls the runtime through a custom op
        self.layer = layer
        self.name = name
        self._order: dict[int, int] = {}
        self._fallback: Any = None

    @property
    def config(self) -> XAttentionConfig:
        return self.runtime.config

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
        layer = self._layer_of(attn)
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
        out = attend(self.runtime, self._key, q, k, v, layer=layer, mask=attention_mask,
                     global_start=n_video if n_text else None)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out
        out, encoder_out = out[:, :-n_text], out[:, -n_text:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return out, encoder_out

    def _layer_of(self, attn: Any) -> int:
        if self.layer is not None:
            return self.layer
        index = self._order.setdefault(id(attn), len(self._order))  # one shared instance: first-call order
        if self.name is not None:
            self.runtime.layer_names.setdefault(index, self.name)
        return index

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


def block_attention_names(transformer: torch.nn.Module) -> list[str]:
    """Names of the joint-attention modules, in layer order: double-stream blocks, then single-stream."""
    model = _transformer_of(transformer)
    return [f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))] + [
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    ]


def xattention_processors(
    transformer: torch.nn.Module, config: XAttentionConfig | None = None, runtime: XAttentionRuntime | None = None,
    *, mask_source: MaskSource | None = None,
) -> dict[str, Any]:
    """A full processor dict for ``transformer.set_attn_processor``: XAttention in the double- and
    single-stream blocks (layers 0.. in that order), the current processors elsewhere (token refiner)."""
    model = _transformer_of(transformer)
    if runtime is None:
        runtime = XAttentionRuntime(config, mask_source=mask_source)
    elif mask_source is not None:
        raise ValueError("give mask_source to the runtime when passing one (XAttentionRuntime(config, mask_source=...))")
    processors = dict(model.attn_processors)
    for index, name in enumerate(block_attention_names(model)):
        runtime.register_layer(index, name)
        processors[f"{name}.processor"] = XAttentionProcessor(runtime=runtime, layer=index, name=name)
    return processors


def apply_xattention(pipe_or_transformer: Any, config: XAttentionConfig | None = None, *,
                     mask_source: MaskSource | None = None) -> XAttentionRuntime:
    """Put XAttention into a HunyuanVideo pipeline or transformer; returns its runtime (step, run record).

    Registers the ``"xattn_video"`` hook in the transformer's diffusers ``HookRegistry``: it installs one
    processor per double/single-stream block and tells the runtime the denoising step of every forward
    (dense for the first ``warmup_steps``). Applying again replaces the earlier config. Undo with
    ``remove_xattention``; ``reset_stateful_hooks()`` resets the runtime.

    Args:
        config: the settings (default ``XAttentionConfig()``).
        mask_source: optional ``MaskRequest -> BlockSparseMask`` used instead of the antidiagonal estimate on
            the calls the plan makes sparse (see ``XAttentionRuntime``).

    Example::

        runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.95, warmup_steps=5))
        runtime.record.mean_density_after_warmup()
    """
    from .hooks import XAttentionHook, register_xattention_hook

    model = _transformer_of(pipe_or_transformer)
    runtime = XAttentionRuntime(config, mask_source=mask_source)
    register_xattention_hook(model, XAttentionHook(runtime, xattention_processors(model, runtime=runtime)))
    return runtime


def remove_xattention(pipe_or_transformer: Any) -> None:
    """Remove the ``"xattn_video"`` hook: the processors that were there before come back."""
    from .hooks import HOOK_NAME, registry_of

    model = _transformer_of(pipe_or_transformer)
    registry = registry_of(model)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)


def runtime_of(pipe_or_transformer: Any) -> XAttentionRuntime | None:
    """The runtime ``apply_xattention`` put into this pipeline or transformer, or None."""
    from .hooks import xattention_hook

    hook = xattention_hook(_transformer_of(pipe_or_transformer))
    return hook.runtime if hook is not None else None
