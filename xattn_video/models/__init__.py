"""Which diffusers transformers XAttention supports, and where its processors go in each: one
``ModelAdapter`` per model class, picked from the transformer's class.

| adapter | diffusers class | sparse (XAttention) | stays stock |
|---|---|---|---|
| ``HunyuanVideo`` | ``HunyuanVideoTransformer3DModel`` | joint video+text attention of the double and single blocks | token refiner |
| ``HunyuanVideo 1.5`` | ``HunyuanVideo15Transformer3DModel`` | joint video+text attention of every block | token refiner |
| ``Wan`` (2.1, 2.2) | ``WanTransformer3DModel`` | self-attention over the video tokens (``blocks.i.attn1``) | cross-attention to the text / image (``attn2``) |

Layers are numbered in block order (HunyuanVideo: double blocks, then single). Each adapter's processor does
what the stock one does around the attention and hands ``[B, H, N, D]`` tensors to the runtime, which decides
dense or sparse (``xattn_video.runtime``).

Example::

    from xattn_video.models import adapter_for
    adapter = adapter_for(pipe.transformer)      # ValueError naming the class and the supported ones otherwise
    adapter.name, adapter.attention_names(pipe.transformer)[:2]   # 'Wan', ['blocks.0.attn1', 'blocks.1.attn1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..runtime import XAttentionRuntime


@dataclass(frozen=True)
class ModelAdapter:
    """How XAttention goes into one transformer class.

    Attributes:
        name: the model family, for messages and reports.
        class_name: the diffusers transformer class this adapter is for (matched along the class's MRO).
        attention_names: ``model -> [module name, ...]`` of the attention modules that get XAttention, in layer
            order.
        make_processor: ``(runtime, layer, name, model) -> processor`` for one of those modules.
    """

    name: str
    class_name: str
    attention_names: Callable[[torch.nn.Module], list[str]]
    make_processor: Callable[[XAttentionRuntime, int, str, torch.nn.Module], Any]


def adapters() -> list[ModelAdapter]:
    """The supported model classes' adapters (imported when first asked for)."""
    from .hunyuan_video import ADAPTER as hunyuan_video
    from .hunyuan_video15 import ADAPTER as hunyuan_video15
    from .wan import ADAPTER as wan

    return [hunyuan_video, hunyuan_video15, wan]


def supported_classes() -> list[str]:
    """The class names ``apply_xattention`` accepts."""
    return [a.class_name for a in adapters()]


def adapter_for(model: Any) -> ModelAdapter:
    """The adapter for ``model``'s class (or a base class of it).

    Raises:
        ValueError: the class is not supported; the message names it and the supported classes.
    """
    found = find_adapter(model)
    if found is None:
        raise ValueError(f"XAttention does not support {type(model).__name__}; supported transformers: "
                        f"{', '.join(supported_classes())} (or a diffusers pipeline holding one)")
    return found


def find_adapter(model: Any) -> ModelAdapter | None:
    """The adapter for ``model``'s class, or None."""
    names = [c.__name__ for c in type(model).__mro__]
    for adapter in adapters():
        if adapter.class_name in names:
            return adapter
    from .hunyuan_video import ADAPTER, looks_like_hunyuan_video

    return ADAPTER if looks_like_hunyuan_video(model) else None


__all__ = ["ModelAdapter", "adapters", "adapter_for", "find_adapter", "supported_classes"]
