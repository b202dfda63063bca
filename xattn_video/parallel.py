"""Ulysses sequence parallelism for XAttention: the one module that talks to ``torch.distributed``.

Under diffusers' context parallelism (``xattn_video.context_parallel``) every rank holds a contiguous shard of
the video tokens and of the text tokens, all heads. XAttention selects blocks over the *whole* sequence, so a
rank cannot estimate on its shard (a per-shard selection is not XAttention; that is why ring attention is
refused). Instead each rank exchanges its shards (one all-to-all for q, k and v together) so that it holds the
whole sequence, in single-GPU order (video, then text), for its ``H / N`` heads; the estimate, the selection
and the kernel run unchanged on those heads; the output goes back with a second all-to-all.

``UlyssesGroup`` does the exchanges and the small agreements the runtime needs so that every rank makes the
same decisions (the density of a call is the mean over all heads of all ranks). ``scatter_heads_reference``
and ``gather_heads_reference`` are its single-process twins (what rank ``r`` must receive, computed from the
full tensors), used by the tests. ``sliced_op`` cuts a per-head threshold table down to a rank's heads.

Example::

    group = UlyssesGroup.from_parallel_config(transformer._parallel_config)   # under enable_context_parallel
    q, k, v = group.scatter_heads(q_loc, k_loc, v_loc, n_video_local)   # [B, S/N, H, D] -> [B, H/N, S, D]
    out = group.gather_heads(out, n_video_local)                        # [B, H/N, S, D] -> [B, S/N, H, D]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import OpConfig

RING_ERROR = ("XAttention does not run under ring attention (ring_degree={}): each rank would select blocks "
              "from its own shard of the keys, and a per-shard selection is not XAttention; use ulysses_degree")


def check_divisible(*, heads: int, n_video: int, n_text: int, degree: int) -> None:
    """Raise a one-line ``ValueError`` unless heads, video tokens and text tokens all divide by ``degree``."""
    for what, n in (("attention heads", heads), ("video tokens", n_video), ("text tokens", n_text)):
        if n % degree:
            raise ValueError(f"Ulysses degree {degree} does not divide the {n} {what}; accepted: a degree that "
                             f"divides heads ({heads}), video tokens ({n_video}) and text tokens ({n_text})")


def check_context_parallel(cp_config: Any) -> None:
    """Refuse what XAttention cannot do under diffusers' ``ContextParallelConfig`` (one-line errors)."""
    ring = int(getattr(cp_config, "ring_degree", 1) or 1)
    if ring > 1:
        raise ValueError(RING_ERROR.format(ring))
    if getattr(cp_config, "ulysses_anything", False) or getattr(cp_config, "ring_anything", False):
        raise ValueError("XAttention needs equal shards: ulysses_anything / ring_anything are not supported "
                         "(choose a degree that divides the heads and the video and text tokens)")


def context_parallel_config(parallel_config: Any) -> Any:
    """The ``ContextParallelConfig`` inside a diffusers ``ParallelConfig`` (or the config itself), or None."""
    if parallel_config is None:
        return None
    return getattr(parallel_config, "context_parallel_config", parallel_config if hasattr(
        parallel_config, "ulysses_degree") else None)


@dataclass
class UlyssesGroup:
    """The ranks of one Ulysses group: all-to-all exchanges between token shards and head shards.

    Args:
        group: the ``torch.distributed`` process group (None: the default group).
        degree: its size N; ``rank`` this process's index in it (it holds heads ``rank*H/N ..``).
        timed: record CUDA events around every exchange (``comm_seconds()`` reads them; benchmarks only).
    """

    group: Any
    degree: int
    rank: int
    timed: bool = False
    _events: list = field(default_factory=list, repr=False)
    _seconds: float = 0.0
    _mask_memo: tuple | None = field(default=None, repr=False)

    @classmethod
    def from_parallel_config(cls, parallel_config: Any) -> "UlyssesGroup":
        """The Ulysses group of a diffusers ``ParallelConfig`` / ``ContextParallelConfig`` (set up by
        ``enable_parallelism`` or ``context_parallel.enable_context_parallel``); ring attention is refused.
        One instance per config: all layers of a model share it (and its memoised key mask)."""
        cp = context_parallel_config(parallel_config)
        known = _GROUPS.get(id(cp))
        if known is not None and known[0] is cp:
            return known[1]
        if cp is None:
            raise ValueError("no context-parallel config: enable it first (context_parallel.enable_context_parallel)")
        check_context_parallel(cp)
        mesh = getattr(cp, "_ulysses_mesh", None)
        if mesh is None:
            raise ValueError("the ContextParallelConfig is not set up (no device mesh): enable it on the model first")
        group = cls(mesh.get_group(), int(cp.ulysses_degree), int(cp._ulysses_local_rank))
        _GROUPS[id(cp)] = (cp, group)
        return group

    # -- exchanges ------------------------------------------------------------------------------------------
    def scatter_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      n_video: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token shards ``[B, S/N, H, D]`` (this rank's ``n_video`` video tokens, then its text tokens) to
        head shards ``[B, H/N, S, D]`` in single-GPU order: every rank's video tokens, then every rank's text."""
        b, s_loc, h, d = q.shape
        if h % self.degree:
            check_divisible(heads=h, n_video=n_video * self.degree, n_text=(s_loc - n_video) * self.degree,
                            degree=self.degree)
        hl, n, n_text = h // self.degree, self.degree, s_loc - n_video
        # one pass into the send buffer and one out of the receive buffer (each pass over ~1 GB at 720p costs
        # ~1 ms a layer): [B, S_loc, N, H/N, D] per tensor -> [N (to rank), 3, B, H/N, S_loc, D]
        send = q.new_empty(n, 3, b, hl, s_loc, d)
        for i, t in enumerate((q, k, v)):
            send[:, i].copy_(t.reshape(b, s_loc, n, hl, d).permute(2, 0, 3, 1, 4))
        recv = self._all_to_all(send)  # [N (from rank: its tokens), 3, B, H/N, S_loc, D]
        out = q.new_empty(3, b, hl, n * s_loc, d)  # every rank's video tokens, then every rank's text
        out[:, :, :, :n * n_video].view(3, b, hl, n, n_video, d).copy_(
            recv[..., :n_video, :].permute(1, 2, 3, 0, 4, 5))
        out[:, :, :, n * n_video:].view(3, b, hl, n, n_text, d).copy_(
            recv[..., n_video:, :].permute(1, 2, 3, 0, 4, 5))
        return out[0], out[1], out[2]

    def gather_heads(self, out: torch.Tensor, n_video: int) -> torch.Tensor:
        """The inverse of ``scatter_heads`` for one tensor: ``[B, H/N, S, D]`` in single-GPU order to this
        rank's tokens ``[B, S/N, H, D]`` (its video tokens, then its text tokens)."""
        b, hl, s, d = out.shape
        n = self.degree
        nv, s_loc = n_video * n, s // n
        send = out.new_empty(n, b, s_loc, hl, d)  # [N (to rank), B, S_loc, H/N, D]: one pass, no concatenation
        send[:, :, :n_video].copy_(out[:, :, :nv].unflatten(2, (n, n_video)).permute(2, 0, 3, 1, 4))
        send[:, :, n_video:].copy_(out[:, :, nv:].unflatten(2, (n, s_loc - n_video)).permute(2, 0, 3, 1, 4))
        x = self._all_to_all(send)  # [N (from rank: its heads), B, S_loc, H/N, D]
        return x.permute(1, 2, 0, 3, 4).reshape(b, s_loc, hl * n, d)

    def gather_key_mask(self, mask: torch.Tensor, n_video: int, n_total: int) -> torch.Tensor:
        """A key mask of this rank's tokens (``[..., S/N]``: its video, then its text keys) to the mask of the
        whole sequence in single-GPU order (``[..., S]``). A mask already over ``n_total`` keys is returned
        as is (the host passed the whole sequence's mask)."""
        if mask.shape[-1] == n_total:
            return mask
        memo = self._mask_memo  # every layer of a forward gets the same mask: one all-gather per forward
        if memo is not None and memo[0] is mask and memo[1] == (n_video, n_total):
            return memo[2]
        s_loc = mask.shape[-1]
        if s_loc * self.degree != n_total:
            raise ValueError(f"attention mask over {s_loc} keys; expected this rank's {n_total // self.degree} "
                             f"or all {n_total} keys")
        dtype = mask.dtype
        flat = mask.reshape(-1, s_loc)
        flat = flat.to(torch.uint8) if dtype == torch.bool else flat.contiguous()
        parts = [torch.empty_like(flat) for _ in range(self.degree)]
        torch.distributed.all_gather(parts, flat, group=self.group)
        full = torch.cat([p[:, :n_video] for p in parts] + [p[:, n_video:] for p in parts], dim=1)
        full = full.to(dtype).reshape(*mask.shape[:-1], n_total)
        self._mask_memo = (mask, (n_video, n_total), full)
        return full

    # -- agreements -----------------------------------------------------------------------------------------
    def gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (the same length on each), in rank order: one small all-gather."""
        device = _comm_device(self.group)
        mine = torch.tensor(values, dtype=torch.float64, device=device)
        parts = [torch.empty_like(mine) for _ in range(self.degree)]
        torch.distributed.all_gather(parts, mine, group=self.group)
        return [p.tolist() for p in parts]

    def head_start(self, local_heads: int) -> int:
        """Index of this rank's first head in the model's heads."""
        return self.rank * local_heads

    # -- timing (benchmarks) --------------------------------------------------------------------------------
    def comm_seconds(self) -> float:
        """Seconds spent in exchanges since the last call (synchronises on the recorded CUDA events)."""
        for _, end in self._events:  # an exchange may still be queued on the stream: wait for it
            end.synchronize()
        total = self._seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        self._events, self._seconds = [], 0.0
        return total

    def _all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        if self.timed and x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.distributed.all_to_all_single(out, x, group=self.group)
            end.record()
            self._events.append((start, end))
        elif self.timed:
            import time

            t0 = time.perf_counter()
            torch.distributed.all_to_all_single(out, x, group=self.group)
            self._seconds += time.perf_counter() - t0
        else:
            torch.distributed.all_to_all_single(out, x, group=self.group)
        return out


_GROUPS: dict[int, tuple[Any, UlyssesGroup]] = {}  # id(ContextParallelConfig) -> (it, its group)


def _comm_device(group: Any) -> torch.device:
    backend = str(torch.distributed.get_backend(group))
    if "nccl" in backend and "gloo" not in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- single-process twins ---------------------------------------------------------------------------------

def scatter_heads_reference(x: torch.Tensor, rank: int, degree: int) -> torch.Tensor:
    """What ``scatter_heads`` gives rank ``rank``, from the whole sequence ``[B, S, H, D]`` in single-GPU
    order: its heads, ``[B, H/N, S, D]``."""
    hl = x.shape[2] // degree
    return x[:, :, rank * hl:(rank + 1) * hl].transpose(1, 2)


def shard_tokens_reference(x: torch.Tensor, n_video: int, rank: int, degree: int, dim: int = 1) -> torch.Tensor:
    """Rank ``rank``'s tokens of a whole sequence in single-GPU order (``n_video`` video tokens first): its
    contiguous video shard, then its contiguous text shard, along ``dim`` (what the context-parallel plan gives
    it)."""
    video, text = x.narrow(dim, 0, n_video), x.narrow(dim, n_video, x.shape[dim] - n_video)
    return torch.cat((video.chunk(degree, dim)[rank], text.chunk(degree, dim)[rank]), dim=dim)


def gather_heads_reference(parts: list[torch.Tensor], n_video: int, rank: int) -> torch.Tensor:
    """What ``gather_heads`` gives rank ``rank`` from every rank's ``[B, H/N, S, D]`` output: its tokens with
    all heads, ``[B, S/N, H, D]``."""
    full = torch.cat(parts, dim=1).transpose(1, 2)  # [B, S, H, D]
    return shard_tokens_reference(full, n_video, rank, len(parts))


# -- per-head thresholds ----------------------------------------------------------------------------------

def sliced_op(op: OpConfig, start: int, count: int, total: int) -> OpConfig:
    """``op`` with every per-head threshold list cut to heads ``start .. start+count`` of ``total`` (the heads
    one rank holds); ``op`` itself when it has no per-head table."""
    t = op.threshold
    if not isinstance(t, Mapping) or not t["heads"]:
        return op
    heads = {}
    for layer, values in t["heads"].items():
        if len(values) != total:
            raise ValueError(f"threshold table: layer {layer} has {len(values)} per-head thresholds, the model has "
                             f"{total} heads")
        heads[layer] = list(values[start:start + count])
    table = {"default": t["default"], "layers": dict(t["layers"]), "heads": heads}
    return dataclasses.replace(op, threshold=table)
