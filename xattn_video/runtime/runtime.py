"""XAttentionRuntime: between a host and ``xattention()``; the only owner of per-call decisions and cached masks.

A host adapter (the diffusers processors, the ComfyUI override) supplies, per transformer forward, what it
knows of the step (``begin_forward``), and per attention call the layer index and the tensors in
``[B, H, N, D]`` with the text start (``attend``). The runtime plans the call (``plan.plan_call``), turns the
host's key-padding mask into ``kv_len``, reuses or estimates the block mask (or asks the mask source), runs
the op or the dense attention, and records the call (``record.RunRecord``). With ``token_order="tile"`` a
sparse call's video tokens are permuted into tile order around the op (``xattn_video.token_order``); a call
whose mask keeps more than ``dense_above`` of its blocks runs dense (``above_break_even``). With ``residual`` a
refresh call (the last warmup step) also runs sparse on a fresh mask and keeps the mask and dense - sparse;
later sparse calls attend with that mask and add the difference (``runtime.residual``). Under Ulysses
sequence parallelism (``attend(..., shard=...)``, ``xattn_video.parallel``) a call holds the whole sequence for
this rank's heads: the plan sees all the model's heads, per-head thresholds are cut to the rank's, and the
densities (``dense_above``, the record) are those of all heads of all ranks, so every rank decides alike.

Example::

    runtime = XAttentionRuntime(XAttentionConfig(threshold=0.9, warmup_steps=5))
    runtime.begin_forward(timestep=t)                       # once per transformer forward
    out = runtime.attend(q, k, v, layer=3, mask=key_padding_mask, global_start=n_video)
    runtime.end_forward()
    runtime.record.density_table()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..attention import dense_attention, xattention, xattention_mask
from ..block_mask import BlockSparseMask
from ..config import OpConfig, XAttentionConfig, ceil_div
from ..log import log_once
from ..parallel import sliced_op
from ..token_order import inverse_permutation, tile_permutation
from .masks import MaskCache
from .padding import Padding, key_padding
from .plan import CallPlan, plan_call
from .record import CallRecord, CallTimer, RunRecord
from .residual import ResidualCache
from .steps import StepClock


@dataclass(frozen=True)
class MaskRequest:
    """What a mask source gets for one sparse call.

    Attributes:
        q, k: ``[B, H, N, D]`` after RoPE (video tokens first, then text).
        kv_len: ``[B]`` valid key lengths (keys at or past it are padding).
        global_start: index of the first text token (None: no text tokens in this call).
        layer: block index (double-stream blocks first, then single-stream).
        step: 0-based denoising step (None when unknown); ``call``: forward within the step.
        config: the op's parameters (block size, thresholds, ...).
        v: ``[B, H, N, D]``, for sources that judge a mask by the attention output (SVG's profiling).
        order: with ``config.token_order == "tile"``, the permutation the tensors are in: position ``i``
            holds the model's (raster) token ``order[i]``; the mask is read in this order. None: raster.
    """

    q: torch.Tensor
    k: torch.Tensor
    kv_len: torch.Tensor
    global_start: int | None
    layer: int
    step: int | None
    call: int
    config: OpConfig
    v: torch.Tensor | None = None
    order: torch.Tensor | None = None


# returns the BlockSparseMask to attend with, in place of the antidiagonal estimate
MaskSource = Callable[[MaskRequest], BlockSparseMask]


class XAttentionRuntime:
    """The per-call plan and run record of one model (shared by all its attention layers).

    Args:
        config: the op's and the schedule's parameters.
        mask_source: optional; for each call the plan makes sparse (and that does not reuse a mask), returns
            the ``BlockSparseMask`` to use instead of the antidiagonal estimate. It goes through the same
            block-sparse attention and is recorded (reason ``"source"``) and reused like an estimated mask.
            Blocks of padded keys are dropped from it; nothing else is added (``keep_text`` and
            ``keep_diagonal`` apply to the estimate only).

    Example::

        def diagonal(req: MaskRequest) -> BlockSparseMask:
            b, h, n = req.q.shape[:3]
            qb = -(-n // req.config.block_size)
            keep = torch.eye(qb, dtype=torch.bool, device=req.q.device).expand(b, h, qb, qb)
            return BlockSparseMask.from_dense(keep, req.config.block_size, n, req.kv_len)

        runtime = XAttentionRuntime(config, mask_source=diagonal)
    """

    def __init__(self, config: XAttentionConfig | None = None, mask_source: MaskSource | None = None) -> None:
        config = config if config is not None else XAttentionConfig()
        if not isinstance(config, XAttentionConfig):
            raise TypeError(f"config must be an XAttentionConfig, got {type(config).__name__}")
        if mask_source is not None and not callable(mask_source):
            raise TypeError(f"mask_source must be callable (MaskRequest -> BlockSparseMask), got "
                            f"{type(mask_source).__name__}")
        self.config = config
        self.mask_source = mask_source
        self.clock = StepClock()
        self.record = RunRecord(warmup_steps=config.schedule.warmup_steps)
        self.masks = MaskCache(config.schedule.mask_reuse_steps)
        self.residuals = ResidualCache(config.schedule.residual_precision)
        self._padding_memo: tuple[Any, int, int, Padding] | None = None
        self._final_step = False
        self._grid: tuple[int, int, int] | None = None
        self._order_memo: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._op_memo: dict[tuple[int, int, int], OpConfig] = {}

    # -- what the host reports ----------------------------------------------------------------------------
    @property
    def step(self) -> int | None:
        """The current 0-based denoising step (None = unknown)."""
        return self.clock.step

    @property
    def call(self) -> int:
        return self.clock.call

    @property
    def runs(self) -> int:
        return self.clock.runs

    @property
    def layer_names(self) -> dict[int, str]:
        return self.record.layer_names

    def register_layer(self, index: int, name: str) -> None:
        """Name a layer for reports (e.g. ``"transformer_blocks.3.attn"``)."""
        self.record.layer_names[index] = name

    def begin_forward(self, step: int | None = None, timestep: Any = None, num_steps: int | None = None,
                      grid: tuple[int, int, int] | None = None) -> None:
        """One transformer forward begins: ``step`` if the host knows it, else its ``timestep`` / sigma;
        ``num_steps`` if the host knows how many steps the run has (no mask is kept at the last one);
        ``grid``: the video tokens' ``(frames, height, width)`` after patchify, which ``token_order="tile"``
        needs (the video tokens of every call of this forward)."""
        if self.clock.observe(step, timestep):
            self.masks.clear()
            self.residuals.clear()
            self.record.clear()  # the record describes the latest run
        self.masks.expire(self.clock.step)
        self._final_step = num_steps is not None and self.clock.step is not None and self.clock.step >= num_steps - 1
        self._padding_memo = None
        self._grid = tuple(int(x) for x in grid) if grid is not None else None

    def end_forward(self) -> None:
        """The forward ended: hold no reference to its tensors."""
        self._padding_memo = None
        self._grid = None

    def end_run(self) -> None:
        """The run (one generation) ended: free the cached masks and forget the step count, so the next
        forward starts a new run. The record stays until then: it describes the run that just ended."""
        self.clock.reset()
        self.masks.clear()
        self.residuals.clear()
        self._padding_memo = None

    def reset(self) -> None:
        """Forget the step count, the cached masks and the record."""
        self.end_run()
        self.record.clear()

    # -- one attention call ---------------------------------------------------------------------------------
    def plan(self, *, layer: int, n: int, heads: int, padding_why: str | None = None) -> CallPlan:
        """The plan of a call at the current step (see ``plan.plan_call``)."""
        return plan_call(self.config, step=self.clock.step, layer=layer, n=n, heads=heads, padding_why=padding_why)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int,
               mask: torch.Tensor | None = None, global_start: int | None = None,
               host_attention: Callable[[], torch.Tensor] | None = None,
               grid: tuple[int, int, int] | None = None, shard: Any = None) -> torch.Tensor:
        """Attention of one call, dense or sparse as planned; ``[B, H, N, D]`` like q.

        Args:
            q, k, v: ``[B, H, N, D]`` (after RoPE).
            layer: the block index.
            mask: the host's attention mask, as the host passes it (parsed by ``padding.key_padding``).
            global_start: first text token (text keys always kept, text queries dense with ``keep_text``).
            host_attention: the host's own exact attention for this call, returning ``[B, H, N, D]``; used
                for dense calls. Without it: ``dense_attention`` (padded keys skipped), or, for a mask that is
                not a key-padding mask, SDPA with that mask.
            grid: the video grid ``(frames, height, width)`` of this call's video tokens; default: the one
                given to ``begin_forward``. Needed by ``token_order="tile"`` (sparse calls are permuted into
                tile order for the estimate and the attention, and the output back).
            shard: under Ulysses sequence parallelism, the ``parallel.UlyssesGroup`` whose rank holds these
                ``H`` heads (of ``H * degree``) over the whole sequence; None: one process.
        """
        b, h, n, _ = q.shape
        h_all = h if shard is None else h * shard.degree
        padding = self._padding(mask, b, k.shape[2])
        plan = self.plan(layer=layer, n=n, heads=h_all, padding_why=padding.why)
        timer = CallTimer(q.is_cuda)
        step, call = self.clock.step, self.clock.call

        def dense() -> torch.Tensor:
            if host_attention is not None:
                return host_attention()
            if padding.why is None:
                return dense_attention(q, k, v, padding.kv_len)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        measure = plan.refresh and not self._final_step  # a difference measured at the last step is never used
        if not plan.sparse and not measure:
            if self._final_step:  # nothing held for this call will be used again
                self.residuals.drop(layer=layer, call=call)
            out = dense()
            timer.stop()
            self.record.add(CallRecord(step, call, layer, "dense", plan.reason, 1.0, (1.0,) * h_all), timer)
            return out

        kv_len = padding.kv_len
        lengths = padding.lengths
        if kv_len is None:
            kv_len = torch.full((b,), k.shape[2], dtype=torch.long, device=q.device)
            lengths = (k.shape[2],) * b
        op = self.config.op if shard is None else self._shard_op(shard.head_start(h), h, h_all)
        # tile order: the op works on permuted tokens (masks, cached ones included, are in that order)
        order = self._tile_order(q, k, global_start, grid if grid is not None else self._grid, lengths)
        qo, ko, vo = (q, k, v) if order is None else (t.index_select(2, order[0]) for t in (q, k, v))

        def sparse(with_mask: BlockSparseMask) -> torch.Tensor:
            out, _ = xattention(qo, ko, vo, op, kv_len, layer=layer, global_start=global_start, mask=with_mask)
            return out if order is None else out.index_select(2, order[1])

        def fresh_mask() -> tuple[BlockSparseMask, str]:
            if self.mask_source is not None:
                request = MaskRequest(qo, ko, kv_len, global_start, layer, step, call, op, vo,
                                      None if order is None else order[0])
                return _checked_source_mask(self.mask_source(request), q, k, kv_len), "source"
            return xattention_mask(qo, ko, op, kv_len, layer=layer, global_start=global_start), "estimated"

        if measure:  # dense as planned; beside it, what this step's sparse call would leave out
            out = dense()
            given, _ = fresh_mask()
            self.residuals.put(layer=layer, call=call, step=step, mask=given, delta=out - sparse(given),
                               lengths=lengths, n_keys=k.shape[2])
            timer.stop()
            self.record.add(CallRecord(step, call, layer, "dense", plan.reason, 1.0, (1.0,) * h_all,
                                       mask_density=_densities(given, h, shard)[0]), timer)
            return out

        held = None
        if self.config.schedule.residual:
            held = self.residuals.get(layer=layer, call=call, lengths=lengths, q_len=n, n_keys=k.shape[2])
            if held is None:
                log_once(f"xattn_video: residual=True but no difference was measured for layer {layer}, call {call} "
                         "on inputs of this shape (no refresh step saw them); such calls run plain sparse")
        if held is not None:
            given, reason = held.mask, "residual"
            if self._final_step:  # its last use: a host that never ends the run (ComfyUI) holds nothing after
                self.residuals.drop(layer=layer, call=call)
        else:
            given = self.masks.get(layer=layer, call=call, step=step, lengths=lengths, q_len=n, n_keys=k.shape[2])
            reason = "reused"
            if given is None:
                given, reason = fresh_mask()
            if reason != "reused" and not self._final_step:  # a mask of the last step would never be reused
                self.masks.put(layer=layer, call=call, step=step, mask=given, lengths=lengths, n_keys=k.shape[2])
        density, per_head = _densities(given, h, shard)
        dense_above = self.config.schedule.dense_above
        if dense_above is not None and density > dense_above:
            # past the break-even the block-sparse kernel is slower than dense attention; the mask stays
            # cached, so a reusing step decides the same without estimating again
            out = dense()
            timer.stop()
            self.record.add(CallRecord(step, call, layer, "dense", "above_break_even", 1.0, (1.0,) * h_all,
                                       mask_density=density), timer)
            return out
        out = sparse(given)
        if held is not None:
            out = out + held.delta
        timer.stop()
        self.record.add(CallRecord(step, call, layer, "sparse", reason, density, per_head, mask_density=density),
                        timer)
        return out

    def density_table(self) -> dict[int, dict[int, float]]:
        """``{step: {layer: mean density}}`` of the latest run (see ``RunRecord.density_table``)."""
        return self.record.density_table()

    def _shard_op(self, start: int, count: int, total: int) -> OpConfig:
        key = (start, count, total)
        if key not in self._op_memo:
            self._op_memo[key] = sliced_op(self.config.op, start, count, total)
        return self._op_memo[key]

    def _tile_order(self, q: torch.Tensor, k: torch.Tensor, global_start: int | None, grid: Any,
                    lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(permutation, inverse) into tile order for this call, or None for raster order."""
        op = self.config.op
        if op.token_order == "raster":
            return None
        n = q.shape[2]
        n_video = n if global_start is None else global_start
        if grid is None:
            raise ValueError(
                "token_order='tile' needs the video grid (frames, height, width in tokens) of every call: "
                "diffusers: apply_xattention or attach_step_hook; ComfyUI: patch_model; by hand: "
                "begin_forward(grid=...) or attend(grid=...)")
        t, h, w = grid
        if t * h * w != n_video:
            raise ValueError(f"token_order='tile': the video grid {t} x {h} x {w} = {t * h * w} tokens does not match "
                             f"this call's {n_video} video tokens (of {n}); accepted: a grid of exactly the video tokens")
        if k.shape[2] != n or min(lengths) < n_video:
            raise ValueError(f"token_order='tile' needs self-attention with every video key valid; got {n} queries, "
                             f"{k.shape[2]} keys, valid key lengths {list(lengths)} for {n_video} video tokens")
        key = (tuple(grid), op.tile_shape(), n, q.device)
        if self._order_memo is None or self._order_memo[0] != key:
            perm = tile_permutation(grid, op.tile_shape(), n, device=q.device)
            self._order_memo = (key, (perm, inverse_permutation(perm)))
        return self._order_memo[1]

    def _padding(self, mask: torch.Tensor | None, batch: int, n_keys: int) -> Padding:
        # every layer of a forward gets the same mask object: parse it (and sync the device) once
        memo = self._padding_memo
        if memo is not None and memo[0] is mask and memo[1:3] == (batch, n_keys):
            return memo[3]
        padding = key_padding(mask, batch, n_keys)
        self._padding_memo = (mask, batch, n_keys, padding)
        return padding


def _checked_source_mask(mask: Any, q: torch.Tensor, k: torch.Tensor, kv_len: torch.Tensor) -> BlockSparseMask:
    """The source's mask, checked against the call; blocks of padded keys dropped."""
    if not isinstance(mask, BlockSparseMask):
        raise TypeError(f"mask_source returned {type(mask).__name__}; expected a BlockSparseMask")
    b, h, n, _ = q.shape
    qb, kb = ceil_div(n, mask.block_size), ceil_div(k.shape[2], mask.block_size)
    idx, cnt = mask.kv_indices, mask.kv_counts
    if mask.q_len != n or idx.dim() != 4 or idx.shape[0] != b or idx.shape[1] not in (1, h) \
            or idx.shape[2] != qb or idx.shape[3] < kb or tuple(cnt.shape) != tuple(idx.shape[:3]):
        raise ValueError(
            f"mask_source returned a mask with kv_indices {tuple(idx.shape)}, kv_counts {tuple(cnt.shape)}, "
            f"q_len={mask.q_len}; for q {tuple(q.shape)}, k {tuple(k.shape)} and block_size={mask.block_size} "
            f"expected [{b}, 1|{h}, {qb}, >={kb}], [{b}, 1|{h}, {qb}] and q_len={n}"
        )
    if mask.kv_len.shape != kv_len.shape or not torch.equal(mask.kv_len.to(kv_len.device), kv_len):
        mask = BlockSparseMask.from_dense(mask.to_dense(), mask.block_size, n, kv_len)
    return mask if mask.kv_indices.device == q.device else dataclasses.replace(
        mask, kv_indices=mask.kv_indices.to(q.device), kv_counts=mask.kv_counts.to(q.device),
        kv_len=mask.kv_len.to(q.device))


def _densities(mask: BlockSparseMask, heads: int, shard: Any = None) -> tuple[float, tuple[float, ...]]:
    """Overall and per-head (mean over the batch) density, with one transfer from the device; with a
    ``shard``, over all heads of all its ranks (the same numbers on every rank)."""
    counts = mask.kv_counts.to(torch.float64).sum(-1)  # [B, H']
    total = mask.valid_kv_blocks().to(torch.float64) * mask.num_q_blocks  # [B]
    per_sample_head = counts / total[:, None]
    values = torch.cat([(counts.sum() / (total.sum() * counts.shape[1])).reshape(1),
                        per_sample_head.mean(0)]).tolist()
    per_head = values[1:] * heads if len(values) == 2 and heads > 1 else values[1:]
    if shard is None:
        return values[0], tuple(per_head)
    parts = shard.gather_floats([values[0], *per_head])  # equal head counts: the mean of the ranks' means
    return sum(p[0] for p in parts) / len(parts), tuple(x for p in parts for x in p[1:])
