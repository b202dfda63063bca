"""Which denoising step a transformer forward belongs to, the same way for every host.

A host reports each forward with what it knows: the step index (diffusers' ``cache_context(step_index=...)``,
ComfyUI's position of ``sigmas`` in ``sample_sigmas``) or only the timestep / sigma. Then:

- step index given: the same index again is another call of that step (classifier-free guidance as two
  batches); a lower index than the last one starts a new run;
- timestep only: a new, lower value is the next step; the same value again is another call of the step; a
  larger one starts a new run;
- neither: the step is unknown (``None``); ``ScheduleConfig.unknown_step`` says what such calls do.

Example::

    clock = StepClock()
    clock.observe(timestep=1000.0); clock.observe(timestep=1000.0); clock.observe(timestep=900.0)
    clock.step, clock.call        # 1, 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def as_float(timestep: Any) -> float | None:
    """The first value of a scalar or tensor timestep (a batch shares one), or None."""
    if timestep is None:
        return None
    return float(torch.as_tensor(timestep).reshape(-1)[0])


@dataclass
class StepClock:
    """``step`` (0-based, None = unknown) and ``call`` (index of the forward within the step) of the current
    forward; ``runs`` counts the runs (generations) seen."""

    step: int | None = None
    call: int = 0
    runs: int = 0
    _last_step: int | None = None
    _last_timestep: float | None = None

    def observe(self, step: int | None = None, timestep: Any = None) -> bool:
        """Advance for one forward; True when it starts a new run (the caller then drops per-run state)."""
        t = as_float(timestep)
        new_run = False
        if step is not None:
            if step < 0:
                raise ValueError(f"step={step} must be >= 0")
            if self._last_step is None or step < self._last_step:
                new_run, self.call = True, 0
            elif step == self._last_step:
                self.call += 1
            else:
                self.call = 0
            self.step = self._last_step = int(step)
        elif t is not None:
            if self._last_timestep is None or self.step is None or t > self._last_timestep:
                new_run, self.step, self.call = True, 0, 0
            elif t == self._last_timestep:
                self.call += 1
            else:
                self.step, self.call = self.step + 1, 0
            self._last_step = self.step
        else:
            self.step, self.call = None, 0
        if t is not None:
            self._last_timestep = t
        if new_run:
            self.runs += 1
        return new_run

    def reset(self) -> None:
        """Forget the count: the next forward starts a new run."""
        self.step, self.call, self._last_step, self._last_timestep = None, 0, None, None
