"""The per-call plan: does this attention call run dense or sparse, and why.

One function for every host, in this order (the first that applies gives the reason):

1. ``short``: fewer tokens than ``max(min_seq_len, 2 * block_size)`` (estimating costs more than it saves);
2. ``dense_layer``: the layer is in ``dense_layers``;
3. ``exact``: the op would keep every block of this layer (tau = 1 for all its heads, no density cap);
4. ``unknown_step``: the host cannot say which step this is and there is a warmup to honour:
   ``unknown_step="dense"`` runs dense, ``"sparse"`` goes on, ``"error"`` raises (logged once);
5. ``warmup``: the step is one of the first ``warmup_steps``; with ``residual`` the last of them also
   measures what the sparse masks leave out (``refresh``);
6. ``refresh``: with ``residual`` and ``residual_refresh`` = R, every (R + 1)-th step after the warmup runs dense
   and measures it again;
7. ``mask``: the host's attention mask is not a key-padding mask: ``fallback="dense"`` runs the host's own
   attention (logged once), ``"error"`` raises;
8. otherwise sparse; the runtime then says where the mask came from (``estimated``, ``reused``, ``source``,
   ``residual``: held since the last measuring step, its difference added),
   unless the mask keeps more than ``dense_above`` of the blocks: then the call runs dense after all,
   ``above_break_even`` (decided by the runtime once the mask is known, see ``runtime.XAttentionRuntime``).

Example::

    plan = plan_call(config, step=3, layer=0, n=4096, heads=24, padding_why=None)
    plan.sparse, plan.reason        # False, "warmup" (with warmup_steps=5)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import XAttentionConfig
from ..log import log_once

DENSE_REASONS = ("short", "dense_layer", "exact", "unknown_step", "warmup", "refresh", "mask", "above_break_even")
SPARSE_REASONS = ("estimated", "reused", "source", "residual")


@dataclass(frozen=True)
class CallPlan:
    """``sparse`` or dense, and the reason (one of ``DENSE_REASONS``, or "sparse" until the mask is known);
    ``refresh``: a dense call that also measures the sparse residual (``runtime.residual``)."""

    sparse: bool
    reason: str
    refresh: bool = False

    @property
    def decision(self) -> str:
        return "sparse" if self.sparse else "dense"


def plan_call(config: XAttentionConfig, *, step: int | None, layer: int, n: int, heads: int,
              padding_why: str | None) -> CallPlan:
    """The plan of one attention call of ``n`` tokens and ``heads`` heads in ``layer`` at ``step`` (None =
    unknown); ``padding_why`` is why the host's mask is not a key-padding mask (None if it is, or no mask)."""
    op, schedule = config.op, config.schedule
    if n < max(schedule.min_seq_len, 2 * op.block_size):
        return CallPlan(False, "short")
    if layer in schedule.dense_layers:
        return CallPlan(False, "dense_layer")
    if op.is_exact(layer, heads):
        return CallPlan(False, "exact")
    if step is None and schedule.warmup_steps > 0:
        what = (f"the denoising step is unknown, so warmup_steps={schedule.warmup_steps} cannot be counted "
                "(diffusers: apply_xattention or attach_step_hook; ComfyUI: sigmas in transformer_options)")
        if schedule.unknown_step == "error":
            raise RuntimeError(f"xattn_video: {what}; unknown_step='error'")
        if schedule.unknown_step == "dense":
            log_once(f"xattn_video: {what}; unknown_step='dense': such calls run dense")
            return CallPlan(False, "unknown_step")
        log_once(f"xattn_video: {what}; unknown_step='sparse': such calls run sparse")
    elif step is not None and step < schedule.warmup_steps:
        last = schedule.residual and step == schedule.warmup_steps - 1 and padding_why is None
        return CallPlan(False, "warmup", refresh=last)
    if step is not None and schedule.residual and schedule.residual_refresh and padding_why is None \
            and (step - schedule.warmup_steps + 1) % (schedule.residual_refresh + 1) == 0:
        return CallPlan(False, "refresh", refresh=True)
    if padding_why is not None:
        if schedule.fallback == "error":
            raise ValueError(f"xattn_video: {padding_why}; XAttention needs a key-padding mask (fallback='error')")
        log_once(f"xattn_video: {padding_why}; fallback='dense': running the host's dense attention for such calls")
        return CallPlan(False, "mask")
    return CallPlan(True, "sparse")
