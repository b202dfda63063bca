"""The host-agnostic runtime between a host (diffusers processors, ComfyUI override) and ``xattention()``.

- ``runtime.py``: ``XAttentionRuntime`` (``begin_forward`` / ``attend`` / ``record``), ``MaskRequest``,
  ``MaskSource``;
- ``plan.py``: the per-call plan (short sequence, dense layer, exact, unknown step, warmup, mask fallback);
- ``steps.py``: which step a forward belongs to (step index or timestep; CFG calls; restarts);
- ``padding.py``: the one key-padding-mask parser (host mask -> ``kv_len``);
- ``masks.py``: masks kept for reuse, bit-packed and freed after their last use;
- ``residual.py``: what a mask leaves out (dense - sparse), measured at a dense step, added back later;
- ``record.py``: the typed run record (step x layer x call, per-head densities, time, decision).

Example::

    from xattn_video.runtime import XAttentionRuntime
    runtime = XAttentionRuntime(config)
    runtime.begin_forward(step=i)
    out = runtime.attend(q, k, v, layer=0, mask=padding_mask, global_start=n_video)
"""

from .padding import Padding, key_padding, key_padding_lengths
from .plan import DENSE_REASONS, SPARSE_REASONS, CallPlan, plan_call
from .record import UNKNOWN_STEP, CallRecord, RunRecord
from .runtime import MaskRequest, MaskSource, XAttentionRuntime
from .steps import StepClock

__all__ = [
    "XAttentionRuntime", "MaskRequest", "MaskSource", "RunRecord", "CallRecord", "CallPlan", "plan_call",
    "StepClock", "Padding", "key_padding", "key_padding_lengths", "DENSE_REASONS", "SPARSE_REASONS",
    "UNKNOWN_STEP",
]
