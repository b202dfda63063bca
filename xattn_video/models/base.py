"""What the processors of the model adapters share (``wan.py``, ``hunyuan_video15.py``).

Example::

    class MyProcessor(AdapterProcessor):
        stock_class = "diffusers.models.transformers.transformer_wan:WanAttnProcessor"
"""

from __future__ import annotations

import importlib
from typing import Any

from ..runtime import XAttentionRuntime
from ..runtime.traced import LayerIndexed, attend, runtime_key


class AdapterProcessor(LayerIndexed):
    """The runtime and layer of one attention module, diffusers' own processor for the calls that are not the
    sparse attention (made on first use), the refusal of diffusers' context parallelism, and ``attend``: the
    runtime's attention, through one custom op under torch.compile.

    Args:
        runtime: shared by all layers of the model.
        layer: this module's layer index.
        name: the module's name for reports.
    """

    _attention_backend = None  # diffusers sets these on processors (set_attention_backend, context parallel)
    _parallel_config = None
    stock_class = ""  # "module:Class" of diffusers' processor for this attention

    def __init__(self, runtime: XAttentionRuntime, layer: int, name: str | None = None) -> None:
        self.runtime = runtime
        self.layer = layer
        self.name = name
        self._stock: Any = None
        self._key = runtime_key(runtime)  # torch.compile calls the runtime through a custom op (runtime/traced.py)

    def _stock_processor(self) -> Any:
        if self._stock is None:
            module, cls = self.stock_class.split(":")
            self._stock = getattr(importlib.import_module(module), cls)()
        return self._stock

    def _refuse_context_parallel(self) -> None:
        if self._parallel_config is not None:
            raise NotImplementedError("XAttention does not support diffusers' context parallelism for this model "
                                      "(each device would see a shard of the video tokens); remove_xattention first, "
                                      "or run on one device")

    def attend(self, q: Any, k: Any, v: Any, mask: Any, global_start: int | None) -> Any:
        """``runtime.attend`` for this layer (``[B, H, N, D]``); one graph-break-free op under torch.compile."""
        return attend(self.runtime, self._key, q, k, v, layer=self._layer_t, mask=mask, global_start=global_start)
