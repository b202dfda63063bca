"""Step tracking for dense warmup and mask reuse.

A forward pre-hook on the transformer reads its ``timestep`` argument: a new timestep value is a new
denoising step, the same value again is another call of the same step (classifier-free guidance run as two
batches, true CFG), and a timestep larger than the last one starts a new generation. This works with any
pipeline and needs nothing from it.

Example::

    state = XAttentionState(config)
    handle = attach_step_tracker(transformer, state)
    ...  # run the pipeline; state.step is the 0-based denoising step, state.densities what was used
    handle.remove()
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from .attention import log_once
from .block_mask import BlockSparseMask
from .config import XAttentionConfig


@dataclass
class _CachedMask:
    step: int
    kv_len: tuple[int, ...]
    mask: BlockSparseMask


@dataclass
class XAttentionState:
    """Shared by all XAttention processors of one transformer.

    ``step`` is the current 0-based denoising step (None until the tracker has seen a forward), ``call`` the
    index of the transformer call within that step. ``densities[step][layer]`` lists the density used by each
    call (1.0 for dense layers and warmup steps); ``head_densities[step][layer]`` the per-head densities of
    sparse calls. ``generation`` counts generations seen.
    """

    config: XAttentionConfig
    step: int | None = None
    call: int = 0
    generation: int = 0
    last_timestep: float | None = None
    densities: dict[int, dict[int, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    head_densities: dict[int, dict[int, list[list[float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    layer_names: dict[int, str] = field(default_factory=dict)
    _masks: dict[tuple[int, int], _CachedMask] = field(default_factory=dict)
    _layer_of_module: dict[int, int] = field(default_factory=dict)

    # -- steps ------------------------------------------------------------------------------------------
    def observe_timestep(self, timestep: Any) -> None:
        """Advance the step counter from a transformer call's ``timestep`` argument."""
        t = float(torch.as_tensor(timestep).reshape(-1)[0]) if timestep is not None else None
        if t is None:
            # no timestep: every call is a new step
            self.step = 0 if self.step is None else self.step + 1
            self.call = 0
        elif self.step is None or self.last_timestep is None or t > self.last_timestep:
            self.reset()  # a new generation: records describe the latest one
            self.generation += 1
            self.step, self.call = 0, 0
        elif t == self.last_timestep:
            self.call += 1
        else:
            self.step += 1
            self.call = 0
        self.last_timestep = t

    def reset(self, keep_records: bool = False) -> None:
        """Forget the step count and cached masks (and the records unless ``keep_records``)."""
        self.step, self.call, self.last_timestep = None, 0, None
        self._masks.clear()
        if not keep_records:
            self.densities.clear()
            self.head_densities.clear()

    def in_warmup(self) -> bool:
        """True while the current step is one of the dense warmup steps. With no step tracker attached the
        step is unknown: warmup cannot apply and every step is sparse (logged once)."""
        if self.step is None:
            if self.config.warmup_steps:
                log_once("xattn_video: no step tracker attached (see schedule.attach_step_tracker): "
                         f"warmup_steps={self.config.warmup_steps} is not applied, every step runs sparse")
            return False
        return self.step < self.config.warmup_steps

    def is_dense(self, layer: int) -> bool:
        """Whether ``layer`` runs dense attention in the current step."""
        return (
            self.in_warmup()
            or layer in self.config.dense_layers
            or self.config.is_dense_everywhere()
        )

    # -- layers -----------------------------------------------------------------------------------------
    def layer_index(self, module: torch.nn.Module, name: str | None = None) -> int:
        """A stable index for an attention module: given at apply time, else in first-call order."""
        key = id(module)
        if key not in self._layer_of_module:
            self._layer_of_module[key] = len(self._layer_of_module)
        idx = self._layer_of_module[key]
        if name is not None:
            self.layer_names.setdefault(idx, name)
        return idx

    def register_layer(self, module: torch.nn.Module, index: int, name: str) -> None:
        self._layer_of_module[id(module)] = index
        self.layer_names[index] = name

    # -- masks and records ------------------------------------------------------------------------------
    def cached_mask(self, layer: int, kv_len: torch.Tensor) -> BlockSparseMask | None:
        """The layer's mask from an earlier step, if ``mask_reuse_steps`` still allows reusing it."""
        hit = self._masks.get((layer, self.call))
        if hit is None or self.step is None:
            return None
        if self.step - hit.step >= self.config.mask_reuse_steps or hit.kv_len != tuple(kv_len.tolist()):
            return None
        return hit.mask

    def store_mask(self, layer: int, kv_len: torch.Tensor, mask: BlockSparseMask) -> None:
        if self.config.mask_reuse_steps > 1 and self.step is not None:
            self._masks[(layer, self.call)] = _CachedMask(self.step, tuple(kv_len.tolist()), mask)

    def record(self, layer: int, density: float, per_head: list[float] | None = None) -> None:
        step = -1 if self.step is None else self.step
        self.densities[step][layer].append(float(density))
        if per_head is not None:
            self.head_densities[step][layer].append(per_head)

    def density_table(self) -> dict[int, dict[int, float]]:
        """{step: {layer: mean density over the calls of that step}}."""
        return {
            s: {l: sum(v) / len(v) for l, v in sorted(layers.items())}
            for s, layers in sorted(self.densities.items())
        }


def attach_step_tracker(transformer: torch.nn.Module, state: XAttentionState) -> torch.utils.hooks.RemovableHandle:
    """Install the forward pre-hook that feeds ``timestep`` into ``state``; returns its removable handle."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        state.observe_timestep(timestep)

    return transformer.register_forward_pre_hook(hook, with_kwargs=True)
