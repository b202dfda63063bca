"""Mask sources: the peers' patterns as callables ``source(request) -> BlockSparseMask``.

The runtime calls a mask source on the calls it decides are sparse, instead of XAttention's estimate; the
mask then runs through the same block-sparse attention and is recorded like an estimated one. A source reads
the request's attributes listed in ``SourceRequest``; ``SVGSource`` with ``criterion="mse"`` also reads ``v``.
Each source adds the text blocks and the diagonal itself (per the op config), as the estimate does.

Example::

    layout = VideoLayout.from_video(129, 720, 1280)
    source = StaticSource(Window3D((3, 6, 10)), layout)          # STA-like local window
    source = ScoredSource("pooled")                              # mean-pooled estimate, XAttention's selection
    mask = source(request)                                       # a BlockSparseMask for this call
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..block_mask import BlockSparseMask
from ..estimate import select_blocks
from .assemble import assemble_mask, check_sequence
from .layout import VideoLayout
from .scores import exact_block_scores, pooled_block_scores
from .static import StaticPattern, video_block_keep
from .svg import SVG, svg_head_keep


class SourceRequest(Protocol):
    """What these sources read from a request for one attention call (the runtime's request has more).

    Attributes:
        q, k: ``[B, H, N, D]`` after RoPE, the layout's video tokens first, then text.
        kv_len: ``[B]`` valid key lengths, or None (all valid).
        global_start: the first text token (must be the layout's video token count), or None.
        layer: block index, for per-layer thresholds.
        config: the op's parameters: ``block_size``, ``threshold_for(layer, heads)``, ``max_density``,
            ``keep_diagonal``, ``keep_text`` (an ``XAttentionConfig`` or the op part of one).
    """

    q: torch.Tensor
    k: torch.Tensor
    kv_len: torch.Tensor | None
    global_start: int | None
    layer: int | None
    config: Any


def _text_is_global(config: Any, name: str) -> None:
    # the peers define text as global; a config that says otherwise asks for something this source cannot do
    if not config.keep_text:
        raise ValueError(f"{name} keeps text tokens global, as the peers do; config.keep_text=False is not "
                         "supported (set keep_text=True)")


def _check_request(layout: VideoLayout, request: Any) -> None:
    if getattr(request, "order", None) is not None:  # the layout's positions are raster positions
        raise ValueError("this mask source places blocks by the video layout's raster positions; the call is in "
                         "token_order='tile' (accepted: token_order='raster' with layout-based sources)")
    n = request.q.shape[2]
    if request.global_start is None and n != layout.num_tokens:
        raise ValueError(f"global_start=None says the call has no text, but it has {n} tokens and the layout "
                         f"{layout.num_tokens} video tokens")
    check_sequence(layout, n, request.global_start)


def _kv_len(request: Any) -> torch.Tensor:
    q, k = request.q, request.k
    if request.kv_len is None:
        return torch.full((q.shape[0],), k.shape[2], dtype=torch.long, device=q.device)
    return request.kv_len.to(device=q.device, dtype=torch.long)


class StaticSource:
    """A fixed pattern (``Window3D``, ``Band``, ``Temporal``, ``Radial``, ``FirstFrames``, a union).

    The video block mask is computed once per block size, the full mask once per sequence shape and key
    lengths; every head gets the same mask.
    """

    def __init__(self, pattern: StaticPattern, layout: VideoLayout) -> None:
        if not isinstance(pattern, StaticPattern):
            raise TypeError(f"pattern must be a StaticPattern, got {type(pattern).__name__}")
        self.pattern, self.layout = pattern, layout
        self._video: dict[int, torch.Tensor] = {}
        self._masks: dict[tuple, BlockSparseMask] = {}

    def video_keep(self, block_size: int) -> torch.Tensor:
        """``[VB, VB]`` bool on the CPU: the pattern over the video blocks (cached)."""
        if block_size not in self._video:
            self._video[block_size] = video_block_keep(self.pattern, self.layout, block_size)
        return self._video[block_size]

    def __call__(self, request: SourceRequest) -> BlockSparseMask:
        cfg, q = request.config, request.q
        _text_is_global(cfg, "StaticSource")
        _check_request(self.layout, request)
        kv_len = _kv_len(request)
        key = (cfg.block_size, cfg.keep_diagonal, q.shape[2], tuple(kv_len.tolist()), str(q.device))
        if key not in self._masks:
            keep = self.video_keep(cfg.block_size).to(q.device)
            self._masks.clear()  # one shape at a time: a generation keeps its shape
            self._masks[key] = assemble_mask(keep, self.layout, cfg.block_size, q.shape[2], kv_len,
                                             cfg.keep_diagonal)
        return self._masks[key]


SCORERS = {"pooled": pooled_block_scores, "exact": exact_block_scores}


class ScoredSource:
    """XAttention's selection (``threshold``, ``max_density``, text, diagonal from the config) on other scores.

    ``score="pooled"``: mean-pooled blocks (SpargeAttn / DraftAttention / VSA-style estimate).
    ``score="exact"``: the true attention mass (the oracle: the best blocks any estimate could pick; its cost
    is that of dense attention and more).
    """

    def __init__(self, score: str = "pooled") -> None:
        if score not in SCORERS:
            raise ValueError(f"score={score!r} is not one of {sorted(SCORERS)}")
        self.score = score

    def __call__(self, request: SourceRequest) -> BlockSparseMask:
        cfg, q, k = request.config, request.q, request.k
        kv_len = _kv_len(request)
        scores = SCORERS[self.score](q, k, cfg.block_size, kv_len)
        return select_blocks(
            scores,
            cfg.threshold_for(request.layer, q.shape[1]),
            block_size=cfg.block_size,
            q_len=q.shape[2],
            kv_len=kv_len,
            keep_diagonal=cfg.keep_diagonal,
            max_density=cfg.max_density,
            global_start=request.global_start if cfg.keep_text else None,
        )


class SVGSource:
    """Sparse VideoGen: per call and head, the spatial or the temporal candidate (see ``svg.SVG``)."""

    def __init__(self, svg: SVG, layout: VideoLayout) -> None:
        if not isinstance(svg, SVG):
            raise TypeError(f"svg must be an SVG, got {type(svg).__name__}")
        self.svg, self.layout = svg, layout
        self._spatial = StaticSource(svg.spatial, layout)
        self._temporal = StaticSource(svg.temporal, layout)
        self.last_choice: torch.Tensor | None = None  # [B, H]: 0 = spatial, 1 = temporal, of the last call

    def __call__(self, request: SourceRequest) -> BlockSparseMask:
        cfg, q = request.config, request.q
        _text_is_global(cfg, "SVGSource")
        _check_request(self.layout, request)
        kv_len = _kv_len(request)
        v = getattr(request, "v", None)
        keeps = [self._spatial.video_keep(cfg.block_size), self._temporal.video_keep(cfg.block_size)]
        keep, self.last_choice = svg_head_keep(
            self.svg, q, request.k, self.layout, cfg.block_size, kv_len, v, cfg.keep_diagonal, keeps
        )
        return assemble_mask(keep, self.layout, cfg.block_size, q.shape[2], kv_len, cfg.keep_diagonal)


class RandomSource:
    """Random video blocks at a fixed ``fraction``: the floor any selection has to beat at the same density.

    Every layer and head draws its own blocks (seeded by ``seed`` and the layer), the same at every step; text
    blocks and the diagonal are added as for the other sources.

    Example::

        source = RandomSource.for_density(0.3, layout, block_size=128, text_tokens=256, valid_text_tokens=40)
    """

    def __init__(self, fraction: float, layout: VideoLayout, seed: int = 0) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction!r} is out of range: accepted [0, 1]")
        self.fraction, self.layout, self.seed = float(fraction), layout, seed
        self._keeps: dict[tuple[int, int, int], torch.Tensor] = {}

    def video_keep(self, layer: int, heads: int, block_size: int) -> torch.Tensor:
        """``[1, H, VB, VB]`` bool on the CPU (cached per layer, heads and block size)."""
        key = (layer, heads, block_size)
        if key not in self._keeps:
            vb = -(-self.layout.num_tokens // block_size)
            g = torch.Generator().manual_seed(self.seed * 100_003 + layer)
            self._keeps[key] = torch.rand(1, heads, vb, vb, generator=g) < self.fraction
        return self._keeps[key]

    def __call__(self, request: SourceRequest) -> BlockSparseMask:
        cfg, q = request.config, request.q
        _text_is_global(cfg, "RandomSource")
        _check_request(self.layout, request)
        keep = self.video_keep(request.layer or 0, q.shape[1], cfg.block_size).to(q.device)
        return assemble_mask(keep, self.layout, cfg.block_size, q.shape[2], _kv_len(request), cfg.keep_diagonal)

    @classmethod
    def for_density(cls, target: float, layout: VideoLayout, block_size: int, *, text_tokens: int = 0,
                    valid_text_tokens: int | None = None, seed: int = 0, heads: int = 1) -> "RandomSource":
        """The source whose masks (text global, diagonal kept) have density closest to ``target`` (bisection on
        the fraction, measured on layer 0's draw)."""
        if not 0.0 < target <= 1.0:
            raise ValueError(f"target={target!r} is out of range: accepted (0, 1]")
        valid = text_tokens if valid_text_tokens is None else valid_text_tokens
        q_len = layout.num_tokens + text_tokens
        kv_len = torch.tensor([layout.num_tokens + valid])

        def density(fraction: float) -> float:
            keep = cls(fraction, layout, seed).video_keep(0, heads, block_size)
            return assemble_mask(keep, layout, block_size, q_len, kv_len).density()

        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if density(mid) < target else (lo, mid)
        return cls(lo, layout, seed)
