"""diffusers host adapter: attention processors that hand HunyuanVideo's joint video+text attention to the runtime,
and ``apply_xattention`` / ``remove_xattention`` for every supported model (the adapter is picked from the
model class: ``xattn_video.models``, which holds HunyuanVideo 1.5's and Wan's processors).

The processor does what diffusers' ``HunyuanVideoAttnProcessor2_0`` does around the attention (projections,
QK norms, RoPE on the video tokens, text after video) and supplies the runtime the layer index and the
tensors in ``[B, H, N, D]``; the runtime decides dense or sparse (``xattn_video.runtime``). Steps come from
the ``"xattn_video"`` hook (``xattn_video.hooks``).

Under diffusers' context parallelism (``xattn_video.context_parallel``; diffusers sets ``_parallel_config`` on
the processors, ``apply_xattention`` copies the model's) a processor holds this rank's shard of the video and
text tokens: it exchanges them (``xattn_video.parallel``, Ulysses) so that the runtime sees the whole sequence
in single-GPU order for this rank's heads, and exchanges the output back. Ring attention is refused.

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
from .parallel import UlyssesGroup, context_parallel_config
from .runtime import MaskSource, XAttentionRuntime
from .runtime.traced import LayerIndexed, attend, layer_index, runtime_key


class XAttentionProcessor(LayerIndexed):
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

    # set by diffusers' enable_parallelism (and by apply_xattention from the model): context parallelism
    _parallel_config: Any = None

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
        self._ulysses: tuple[Any, UlyssesGroup | None] = (None, None)

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
            query, key, value = append_text_qkv(attn, encoder_hidden_states, query, key, value)

        ulysses = self._ulysses_group()
        if ulysses is None:
            if attention_mask is not None and attention_mask.shape[-1] != n_video + n_text:
                raise ValueError(
                    f"xattn_video: the attention mask covers {attention_mask.shape[-1]} keys, this call has "
                    f"{n_video + n_text} tokens: the sequence is sharded (context parallelism?) but this processor "
                    "has no parallel config; apply XAttention with apply_xattention after enable_context_parallel")
            q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, H, N, D]
            layer = self._layer_t if self._layer_t is not None else layer_index(self._layer_of(attn))
            out = attend(self.runtime, self._key, q, k, v, layer=layer, mask=attention_mask,
                         global_start=n_video if n_text else None)
            out = out.transpose(1, 2)
        else:  # this rank's tokens -> the whole sequence for its heads, and back
            degree = ulysses.degree
            if attention_mask is not None:
                attention_mask = ulysses.gather_key_mask(attention_mask, n_video, (n_video + n_text) * degree)
            q, k, v = ulysses.scatter_heads(query, key, value, n_video)
            out = self.runtime.attend(q, k, v, layer=self._layer_of(attn), mask=attention_mask,
                                      global_start=n_video * degree if n_text else None, shard=ulysses)
            out = ulysses.gather_heads(out, n_video)
        out = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out
        out, encoder_out = out[:, :-n_text], out[:, -n_text:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_out = attn.to_add_out(encoder_out)
        return out, encoder_out

    def _ulysses_group(self) -> UlyssesGroup | None:
        """The Ulysses group of ``_parallel_config`` (None without context parallelism); ring is refused."""
        config = self._parallel_config
        if self._ulysses[0] is not config:
            cp = context_parallel_config(config)
            self._ulysses = (config, UlyssesGroup.from_parallel_config(config) if cp is not None else None)
        return self._ulysses[1]

    def _layer_of(self, attn: Any) -> int:
        if self._layer is not None:
            return self._layer
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


def append_text_qkv(attn: Any, text: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint attention's text side: the text tokens through the attention's added projections and QK norms,
    appended after the video's ``[B, N, H, D]`` query, key and value (HunyuanVideo v1 and 1.5)."""
    eq, ek, ev = (_heads(p(text), attn.heads) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if attn.norm_added_q is not None:
        eq = attn.norm_added_q(eq)
    if attn.norm_added_k is not None:
        ek = attn.norm_added_k(ek)
    return tuple(torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))


def _rope_video(x: torch.Tensor, n_video: int, rope: Any, apply_rotary_emb: Any) -> torch.Tensor:
    """RoPE on the first ``n_video`` tokens only (text tokens carry no position)."""
    if n_video == x.shape[1]:
        return apply_rotary_emb(x, rope, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :n_video], rope, sequence_dim=1), x[:, n_video:]], dim=1)


# -- applying to a model ---------------------------------------------------------------------------------
# The model class picks the adapter (xattn_video.models): HunyuanVideo, HunyuanVideo 1.5, Wan 2.1 / 2.2.

_PIPELINE_TRANSFORMERS = ("transformer", "transformer_2")  # Wan 2.2 A14B: high-noise, then low-noise expert


def _transformers_of(pipe_or_transformer: Any) -> list[tuple[str, torch.nn.Module]]:
    """``[(prefix, transformer), ...]``: a pipeline's transformers (Wan 2.2 has two), or the transformer given.

    Raises:
        ValueError: no supported transformer; the message names the class and the supported ones.
    """
    from .models import adapter_for

    found = [(name, getattr(pipe_or_transformer, name)) for name in _PIPELINE_TRANSFORMERS
             if isinstance(getattr(pipe_or_transformer, name, None), torch.nn.Module)]
    if not found:
        found = [("", pipe_or_transformer)]
    for _, model in found:
        adapter_for(model)
    return found


def _transformer_of(pipe_or_transformer: Any) -> torch.nn.Module:
    """The (first) transformer of a pipeline, or the transformer given (see ``_transformers_of``)."""
    return _transformers_of(pipe_or_transformer)[0][1]


def block_attention_names(transformer: torch.nn.Module) -> list[str]:
    """Names of the attention modules that get XAttention, in layer order (HunyuanVideo: double-stream
    blocks, then single-stream; HunyuanVideo 1.5: every block; Wan: every block's self-attention)."""
    from .models import adapter_for

    model = _transformer_of(transformer)
    return adapter_for(model).attention_names(model)


def xattention_processors(
    transformer: torch.nn.Module, config: XAttentionConfig | None = None, runtime: XAttentionRuntime | None = None,
    *, mask_source: MaskSource | None = None, first_layer: int = 0, prefix: str = "",
) -> dict[str, Any]:
    """A full processor dict for ``transformer.set_attn_processor``: XAttention in the attention modules of
    ``block_attention_names`` (layers ``first_layer..`` in that order, named ``prefix + name`` in reports), the
    current processors elsewhere (token refiner, Wan's cross-attention)."""
    from .models import adapter_for

    model = _transformer_of(transformer)
    adapter = adapter_for(model)
    if runtime is None:
        runtime = XAttentionRuntime(config, mask_source=mask_source)
    elif mask_source is not None:
        raise ValueError("give mask_source to the runtime when passing one (XAttentionRuntime(config, mask_source=...))")
    processors = dict(model.attn_processors)
    parallel = getattr(model, "_parallel_config", None)
    if context_parallel_config(parallel) is not None:
        UlyssesGroup.from_parallel_config(parallel)  # refuses ring attention now, not at the first call
    for index, name in enumerate(adapter.attention_names(model), start=first_layer):
        runtime.register_layer(index, prefix + name)
        proc = adapter.make_processor(runtime, index, prefix + name, model)
        proc._parallel_config = parallel  # Wan's and HunyuanVideo 1.5's processors refuse it at their first call
        processors[f"{name}.processor"] = proc
    return processors


def apply_xattention(pipe_or_transformer: Any, config: XAttentionConfig | None = None, *,
                     mask_source: MaskSource | None = None) -> XAttentionRuntime:
    """Put XAttention into a pipeline or transformer; returns its runtime (step, run record).

    Supported: HunyuanVideo, HunyuanVideo 1.5 and Wan 2.1 / 2.2 (``xattn_video.models``; the model class picks
    the adapter). Registers the ``"xattn_video"`` hook in the transformer's diffusers ``HookRegistry``: it
    installs the processors and tells the runtime the denoising step of every forward (dense for the first
    ``warmup_steps``). A Wan 2.2 pipeline's two experts share one runtime; ``transformer_2``'s layers follow
    ``transformer``'s. Applying again replaces the earlier config. Undo with ``remove_xattention``;
    ``reset_stateful_hooks()`` resets the runtime. Under context parallelism (HunyuanVideo only;
    ``context_parallel.enable_context_parallel``, before or after this call) the processors run Ulysses:
    every rank the whole sequence for its heads, the same decisions and record on every rank.

    Args:
        config: the settings (default ``XAttentionConfig()``).
        mask_source: optional ``MaskRequest -> BlockSparseMask`` used instead of the antidiagonal estimate on
            the calls the plan makes sparse (see ``XAttentionRuntime``).

    Raises:
        ValueError: an unsupported model class (the message names it and the supported ones).

    Example::

        runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.95, warmup_steps=5))
        runtime.record.mean_density_after_warmup()
    """
    from .hooks import XAttentionHook, register_xattention_hook

    models = _transformers_of(pipe_or_transformer)
    runtime = XAttentionRuntime(config, mask_source=mask_source)
    first = 0
    for prefix, model in models:
        label = f"{prefix}." if len(models) > 1 else ""
        processors = xattention_processors(model, runtime=runtime, first_layer=first, prefix=label)
        register_xattention_hook(model, XAttentionHook(runtime, processors))
        first += len(block_attention_names(model))
    return runtime


def remove_xattention(pipe_or_transformer: Any) -> None:
    """Remove the ``"xattn_video"`` hook: the processors that were there before come back."""
    from .hooks import HOOK_NAME, registry_of

    for _, model in _transformers_of(pipe_or_transformer):
        registry = registry_of(model)
        if registry.get_hook(HOOK_NAME) is not None:
            registry.remove_hook(HOOK_NAME, recurse=False)


def runtime_of(pipe_or_transformer: Any) -> XAttentionRuntime | None:
    """The runtime ``apply_xattention`` put into this pipeline or transformer, or None."""
    from .hooks import xattention_hook

    hook = xattention_hook(_transformer_of(pipe_or_transformer))
    return hook.runtime if hook is not None else None
