"""The peers' sparse-attention patterns as block masks, for quality comparisons with XAttention.

Each pattern becomes a ``BlockSparseMask`` over the same raster-order tokens and runs through the same
block-sparse attention as XAttention's estimated masks, so a comparison isolates *which blocks* are chosen:

- static: ``Window3D`` (Sliding Tile Attention's local window), ``Band`` (Sparse VideoGen's spatial head),
  ``Temporal`` (SVG's temporal head), ``Radial`` (Radial Attention), ``FirstFrames`` (a sink); ``a | b``;
- per call: ``SVG`` (SVG's online choice between a spatial and a temporal candidate per head),
  ``pooled_block_scores`` (mean-pooled estimate) and ``exact_block_scores`` (the oracle) with XAttention's
  threshold selection;
- the floor: ``RandomSource``, random blocks at a given density.

``StaticSource``, ``SVGSource``, ``ScoredSource`` and ``RandomSource`` are mask sources ``source(request) ->
BlockSparseMask`` for the runtime. Like the op, this package knows no host.

Example::

    from xattn_video.patterns import VideoLayout, Window3D, StaticSource, fit_density
    layout = VideoLayout.from_video(129, 720, 1280)                          # 33 x 45 x 80 tokens
    r, density = fit_density(lambda r: Window3D((r, r, r)), layout, 128, target=0.3)
    source = StaticSource(Window3D((r, r, r)), layout)
"""

from .assemble import assemble_mask
from .calibrate import fit_density, pattern_density
from .layout import VideoLayout
from .scores import exact_block_scores, pooled_block_scores
from .source import RandomSource, ScoredSource, SourceRequest, StaticSource, SVGSource
from .static import (Band, FirstFrames, Radial, StaticPattern, Temporal, Union, Window3D, video_block_keep,
                     video_block_keep_reference)
from .svg import SVG, svg_head_keep

__all__ = [
    "VideoLayout", "StaticPattern", "Window3D", "Band", "Temporal", "Radial", "FirstFrames", "Union",
    "video_block_keep", "video_block_keep_reference", "assemble_mask", "pooled_block_scores",
    "exact_block_scores", "SVG", "svg_head_keep", "SourceRequest", "StaticSource", "ScoredSource", "SVGSource",
    "RandomSource",
    "fit_density", "pattern_density",
]
