"""HunyuanVideo (v1) adapter: ``xattn_video.processors.XAttentionProcessor`` in every double- and
single-stream block; the token refiner keeps its processor.

Example::

    from xattn_video.models.hunyuan_video import ADAPTER
    ADAPTER.attention_names(transformer)   # ['transformer_blocks.0.attn', ..., 'single_transformer_blocks.0.attn', ...]
"""

from __future__ import annotations

from typing import Any

import torch

from ..runtime import XAttentionRuntime
from . import ModelAdapter


def looks_like_hunyuan_video(model: Any) -> bool:
    """A HunyuanVideo-style transformer (double and single blocks, diffusers' processor API), whatever its class."""
    return (hasattr(model, "transformer_blocks") and hasattr(model, "single_transformer_blocks")
            and hasattr(model, "set_attn_processor"))


def attention_names(model: torch.nn.Module) -> list[str]:
    """The joint-attention modules in layer order: double-stream blocks, then single-stream."""
    return [f"transformer_blocks.{i}.attn" for i in range(len(model.transformer_blocks))] + [
        f"single_transformer_blocks.{i}.attn" for i in range(len(model.single_transformer_blocks))
    ]


def make_processor(runtime: XAttentionRuntime, layer: int, name: str, model: torch.nn.Module) -> Any:
    from ..processors import XAttentionProcessor

    return XAttentionProcessor(runtime=runtime, layer=layer, name=name)


ADAPTER = ModelAdapter("HunyuanVideo", "HunyuanVideoTransformer3DModel", attention_names, make_processor)
