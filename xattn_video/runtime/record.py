"""The run record: one entry per attention call (step x layer x call, with per-head densities), typed.

Every host fills it through the runtime, and every summary reads it: the CLI's ``summary.json``, the compare
report and the ComfyUI node all take their densities from here, and there is one definition of "mean
density after warmup" (``mean_density_after_warmup``).

Densities are fractions of the (query block, valid key block) pairs computed: 1.0 for a dense call.

Example::

    record = runtime.record
    record.density_table()              # {step: {layer: mean density over the calls of that step}}
    record.mean_density_after_warmup()  # one number, or None if no call ran after the warmup
    [c.reason for c in record.calls]    # "warmup", "estimated", "reused", ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

UNKNOWN_STEP = -1  # how tables key the calls whose step was unknown


@dataclass
class CallRecord:
    """One attention call.

    Attributes:
        step: 0-based denoising step, None when the host could not say.
        call: index of the transformer forward within the step (CFG cond / uncond).
        layer: block index (double-stream blocks first, then single-stream).
        decision: "dense" or "sparse".
        reason: why (``plan.DENSE_REASONS``) or where the sparse mask came from (``plan.SPARSE_REASONS``).
        density: fraction of block pairs computed (1.0 when dense).
        head_density: per head, mean over the batch (all 1.0 when dense).
        mask_density: the density of the block mask the call selected (sparse calls: ``density``;
            ``above_break_even``: the density that sent it dense; a dense call measuring the residual: the
            density of the mask it measured with); None when no mask was selected.
        time_s: wall time of the attention (GPU time between CUDA events on a GPU), None until resolved.
    """

    step: int | None
    call: int
    layer: int
    decision: str
    reason: str
    density: float
    head_density: tuple[float, ...]
    mask_density: float | None = None
    time_s: float | None = None

    def key(self) -> tuple:
        """Everything but the time: what two hosts fed the same steps must agree on."""
        return (self.step, self.call, self.layer, self.decision, self.reason, self.density, self.head_density,
                self.mask_density)


class CallTimer:
    """Times one call: perf counters on a CPU, CUDA events on a GPU (read later, without a sync per call)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        if cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
            self.seconds: float | None = None

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.seconds = time.perf_counter() - self.t0

    def read(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1000.0
        return float(self.seconds or 0.0)


@dataclass
class RunRecord:
    """The calls of the latest run (a new run clears it), and the layer names the host registered."""

    warmup_steps: int = 0
    layer_names: dict[int, str] = field(default_factory=dict)
    _calls: list[CallRecord] = field(default_factory=list)
    _pending: list[tuple[CallRecord, CallTimer]] = field(default_factory=list)

    def add(self, entry: CallRecord, timer: CallTimer | None = None) -> None:
        self._calls.append(entry)
        if timer is not None:
            self._pending.append((entry, timer))

    def clear(self) -> None:
        self._calls.clear()
        self._pending.clear()

    @property
    def calls(self) -> list[CallRecord]:
        """Every call of the run, in order, with its time resolved."""
        for entry, timer in self._pending:
            entry.time_s = timer.read()
        self._pending.clear()
        return list(self._calls)

    def __len__(self) -> int:
        return len(self._calls)

    # -- views ------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """The steps seen (``UNKNOWN_STEP`` for calls whose step was unknown), ascending."""
        return sorted({_step_key(c) for c in self._calls})

    def layers(self) -> list[int]:
        return sorted({c.layer for c in self._calls} | set(self.layer_names))

    def density_table(self) -> dict[int, dict[int, float]]:
        """``{step: {layer: mean density over the calls of that step}}``; unknown steps under ``UNKNOWN_STEP``."""
        cells: dict[int, dict[int, list[float]]] = {}
        for c in self._calls:
            cells.setdefault(_step_key(c), {}).setdefault(c.layer, []).append(c.density)
        return {s: {l: _mean(v) for l, v in sorted(layers.items())} for s, layers in sorted(cells.items())}

    def head_table(self) -> dict[int, dict[int, list[float]]]:
        """``{step: {layer: per-head density, mean over the calls}}``."""
        cells: dict[int, dict[int, list[tuple[float, ...]]]] = {}
        for c in self._calls:
            cells.setdefault(_step_key(c), {}).setdefault(c.layer, []).append(c.head_density)
        return {s: {l: [_mean(h) for h in zip(*v)] for l, v in sorted(layers.items())}
                for s, layers in sorted(cells.items())}

    def decision_table(self) -> dict[int, dict[int, str]]:
        """``{step: {layer: reason}}`` (the reason of the step's first call of that layer)."""
        out: dict[int, dict[int, str]] = {}
        for c in self._calls:
            out.setdefault(_step_key(c), {}).setdefault(c.layer, c.reason)
        return out

    def per_step_layer(self, num_steps: int, layers: Iterable[int]) -> list[list[float | None]]:
        """A ``[step][layer]`` matrix of ``density_table`` for steps 0..num_steps-1 (None = not called)."""
        table = self.density_table()
        layers = list(layers)
        return [[table.get(s, {}).get(l) for l in layers] for s in range(num_steps)]

    def mean_density_after_warmup(self) -> float | None:
        """Mean of the (step, layer) densities of every step that is not a warmup step (unknown steps
        included: they were not counted as warmup). None when no such call was recorded."""
        values = [d for s, layers in self.density_table().items()
                  if s == UNKNOWN_STEP or s >= self.warmup_steps for d in layers.values()]
        return _mean(values) if values else None

    def counts(self) -> dict[str, int]:
        """Calls per reason (e.g. ``{"warmup": 8, "estimated": 6, "reused": 2}``)."""
        out: dict[str, int] = {}
        for c in self._calls:
            out[c.reason] = out.get(c.reason, 0) + 1
        return out

    def count(self, decision: str | None = None, reason: str | None = None) -> int:
        """How many calls had this decision ("dense" / "sparse") and / or reason."""
        return sum(1 for c in self._calls if (decision is None or c.decision == decision)
                   and (reason is None or c.reason == reason))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: the calls (with times) and the layer names."""
        return {"warmup_steps": self.warmup_steps,
                "layer_names": {str(k): v for k, v in sorted(self.layer_names.items())},
                "calls": [c.__dict__.copy() | {"head_density": list(c.head_density)} for c in self.calls]}


def _step_key(c: CallRecord) -> int:
    return UNKNOWN_STEP if c.step is None else c.step


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
