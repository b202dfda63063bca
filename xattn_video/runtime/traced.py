"""The runtime's attention call as one opaque custom op, so ``torch.compile`` keeps a whole transformer in one graph.

``XAttentionRuntime.attend`` decides per call from Python state (step, plan, cached masks) and from the data
(key-padding lengths, the estimated mask); traced by dynamo it broke each layer's graph several times
(``.item()``, ``tolist()``, ``time.perf_counter``). Under ``torch.compile`` the host adapters call it through
``torch.ops.xattn_video.attend`` instead: a custom op whose output is ``q``-shaped and whose body is exactly
the eager call (same decisions, same record, same kernels), so the compiled graph runs around it without a
break. Eager calls (no compile) go straight to ``runtime.attend``. Runtimes are found by a small integer key
(``runtime_key``) kept in a weak table; inference only (the op has no backward). The layer index travels as a
0-d tensor (``layer_index``): an integer attribute would be a constant of the graph, and regional compilation
(``transformer.compile_repeated_blocks()``) would recompile every block and give up after 8.

Example::

    key, layer = runtime_key(runtime), layer_index(3)   # once, outside the compiled region
    out = attend(runtime, key, q, k, v, layer=layer, mask=padding_mask, global_start=n_video)
"""

from __future__ import annotations

import itertools
import weakref

import torch

_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_RUNTIMES: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
_NEXT = itertools.count(1)


def runtime_key(runtime) -> int:
    """A small integer naming ``runtime`` for the custom op (the same runtime keeps its key)."""
    key = _KEYS.get(runtime)
    if key is None:
        key = next(_NEXT)
        _KEYS[runtime] = key
        _RUNTIMES[key] = runtime
    return key


def layer_index(layer: int) -> torch.Tensor:
    """``layer`` as the 0-d CPU tensor ``attend`` takes: a graph input under torch.compile, not a constant, so
    that repeated blocks share one compiled graph."""
    return torch.tensor(int(layer), dtype=torch.int64)


class LayerIndexed:
    """A processor's ``layer`` (an int; None for one instance shared by several layers) kept beside
    ``_layer_t``, its ``layer_index`` tensor: the value a compiled graph reads."""

    @property
    def layer(self) -> int | None:
        return self._layer

    @layer.setter
    def layer(self, value: int | None) -> None:
        self._layer = value
        self._layer_t = None if value is None else layer_index(value)


@torch.library.custom_op("xattn_video::attend", mutates_args=())
def _attend_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, runtime: int,
               layer: torch.Tensor, global_start: int) -> torch.Tensor:
    rt = _RUNTIMES.get(runtime)
    if rt is None:
        raise RuntimeError(f"xattn_video::attend: runtime key {runtime} names no live runtime")
    out = rt.attend(q, k, v, layer=int(layer), mask=mask, global_start=None if global_start < 0 else global_start)
    # one fixed layout, the fake's: [B, H, N, D] stored as [B, N, H, D] (what the adapters flatten next, for free;
    # what SDPA's fused kernels return already). Never one of the inputs (a custom op may not alias them).
    if out.transpose(1, 2).is_contiguous() and not (out is q or out is k or out is v):
        return out
    return out.transpose(1, 2).contiguous().transpose(1, 2)


@_attend_op.register_fake
def _attend_fake(q, k, v, mask, runtime, layer, global_start):
    b, h, n, d = q.shape
    return q.new_empty((b, n, h, d)).transpose(1, 2)


def attend(runtime, key: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: torch.Tensor,
           mask: torch.Tensor | None = None, global_start: int | None = None) -> torch.Tensor:
    """``runtime.attend(q, k, v, layer=..., mask=..., global_start=...)``; through the custom op while
    ``torch.compile`` traces (``key = runtime_key(runtime)``, ``layer = layer_index(i)``)."""
    if torch.compiler.is_compiling():
        return torch.ops.xattn_video.attend(q, k, v, mask, key, layer, -1 if global_start is None else global_start)
    return runtime.attend(q, k, v, layer=int(layer), mask=mask, global_start=global_start)
