"""Pick a static pattern's size for a target density, so that patterns are compared at equal cost.

Example::

    radius, density = fit_density(lambda r: Band(r), layout, block_size=128, target=0.3)
    pattern = Band(radius)          # the widest band that computes at most 30% of the blocks
"""

from __future__ import annotations

from typing import Callable

import torch

from .assemble import assemble_mask
from .layout import VideoLayout
from .static import StaticPattern, video_block_keep


def pattern_density(
    pattern: StaticPattern, layout: VideoLayout, block_size: int, text_tokens: int = 0,
    valid_text_tokens: int | None = None,
) -> float:
    """Fraction of valid block pairs the kernel computes for ``pattern`` on the video followed by ``text_tokens``
    text tokens, the first ``valid_text_tokens`` of them valid (default: all), text global and diagonal kept,
    as ``StaticSource`` builds the mask."""
    valid = text_tokens if valid_text_tokens is None else valid_text_tokens
    if not 0 <= valid <= text_tokens:
        raise ValueError(f"valid_text_tokens={valid} is out of range: accepted 0..text_tokens={text_tokens}")
    keep = video_block_keep(pattern, layout, block_size)
    q_len = layout.num_tokens + text_tokens
    kv_len = torch.tensor([layout.num_tokens + valid])
    return assemble_mask(keep, layout, block_size, q_len, kv_len).density()


def fit_density(
    make: Callable[[int], StaticPattern],
    layout: VideoLayout,
    block_size: int,
    target: float,
    *,
    lo: int = 0,
    hi: int | None = None,
    text_tokens: int = 0,
    valid_text_tokens: int | None = None,
) -> tuple[int, float]:
    """The largest ``p`` in ``lo..hi`` whose ``make(p)`` has density ``<= target``, and that density.

    ``make`` must give patterns whose density does not decrease with ``p`` (a radius). ``hi`` defaults to the
    video's token count; ``text_tokens`` and ``valid_text_tokens`` as in ``pattern_density``. Raises
    ``ValueError`` when even ``make(lo)`` is denser than ``target``.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target={target!r} is out of range: accepted (0, 1]")
    hi = layout.num_tokens if hi is None else hi
    if hi < lo:
        raise ValueError(f"hi={hi} must be >= lo={lo}")
    best = pattern_density(make(lo), layout, block_size, text_tokens, valid_text_tokens)
    if best > target:
        raise ValueError(f"make({lo}) already has density {best:.4f} > target={target}; the smallest pattern "
                         "of this family is too dense for it")
    best_p = lo
    while lo < hi:  # invariant: make(best_p) fits, every p > hi does not
        mid = (lo + hi + 1) // 2
        density = pattern_density(make(mid), layout, block_size, text_tokens, valid_text_tokens)
        if density <= target:
            best_p, best, lo = mid, density, mid
        else:
            hi = mid - 1
    return best_p, best
