"""3D-tile token order: a permutation of the video tokens so that a block of B tokens is a compact t x h x w tile.

HunyuanVideo lays video tokens out frame by frame, row by row (raster order). At 720p a row holds 80 tokens,
so a 128-token block is a sliver of one or two latent rows; in tile order a block of 128 is a 2 x 8 x 8 piece
of space-time, whose keys and queries are neighbours in every direction. The op is indifferent to the order
of its tokens: the runtime permutes q, k, v with ``tile_permutation`` before the estimate and the attention
and puts the output back with the inverse (``inverse_permutation``). Text tokens stay last, in their order.

Tiles are laid out in raster order over the grid of tiles, tokens in raster order within a tile; tiles at
the far borders are ragged (smaller) where a grid side is not a multiple of the tile side.

Plain PyTorch, no fast path (the indices are computed once per grid and reused; the gather is one
``index_select`` per tensor).

Example::

    perm = tile_permutation((3, 5, 7), (2, 2, 2))             # 105 video tokens
    inv = inverse_permutation(perm)
    x_tile = x.index_select(2, perm)                          # x: [B, H, 105, D], raster order
    assert torch.equal(x_tile.index_select(2, inv), x)
"""

from __future__ import annotations

from typing import Sequence

import torch

from .config import TOKEN_ORDERS  # noqa: F401  (the accepted names live with the setting)

Grid = tuple[int, int, int]


def _check_shape(value: Sequence[int], what: str) -> Grid:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3 or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in value):
        raise ValueError(f"{what}={value!r} must be three positive integers (frames, height, width) in tokens")
    return (int(value[0]), int(value[1]), int(value[2]))


def default_tile(block_size: int) -> Grid:
    """The tile shape for blocks of ``block_size`` tokens: the widest square power-of-two h = w with
    h * w <= block_size, and t = block_size // (h * w) frames (128 -> 2 x 8 x 8, 64 -> 1 x 8 x 8,
    256 -> 1 x 16 x 16, 16 -> 1 x 4 x 4). For a power-of-two block size a tile is exactly one block.

    Example::

        default_tile(128)                                      # (2, 8, 8)
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive integer")
    side = 1
    while (2 * side) * (2 * side) <= block_size:
        side *= 2
    return (max(1, block_size // (side * side)), side, side)


def tile_permutation(grid: Sequence[int], tile: Sequence[int], n_tokens: int | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Indices that put raster-ordered tokens into tile order: ``x_tile = x.index_select(dim, perm)``.

    Args:
        grid: the video grid in tokens, ``(frames, height, width)`` (after patchify).
        tile: the tile shape ``(t, h, w)`` in tokens.
        n_tokens: the whole sequence length; the tokens past the video (text) keep their places at the end.
            None: the video tokens only.
        device: where the indices live.

    Returns:
        int64 ``[n_tokens]``: position ``i`` of the tile order holds raster token ``perm[i]``.

    Example::

        tile_permutation((1, 2, 4), (1, 2, 2)).tolist()        # [0, 1, 4, 5, 2, 3, 6, 7]
    """
    t, h, w = _check_shape(grid, "grid")
    a, b, c = _check_shape(tile, "tile")
    n_video = t * h * w
    n = n_video if n_tokens is None else n_tokens
    if n < n_video:
        raise ValueError(f"n_tokens={n} is shorter than the video grid {t} x {h} x {w} = {n_video} tokens")
    ti = torch.arange(t, device=device)[:, None, None] // a
    hi = torch.arange(h, device=device)[None, :, None] // b
    wi = torch.arange(w, device=device)[None, None, :] // c
    tile_id = ((ti * -(-h // b) + hi) * -(-w // c) + wi).reshape(-1)
    # stable: within a tile the raster order of its tokens is kept
    perm = torch.argsort(tile_id, stable=True)
    if n > n_video:
        perm = torch.cat([perm, torch.arange(n_video, n, device=device)])
    return perm


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The inverse of a permutation: ``x.index_select(d, perm).index_select(d, inverse_permutation(perm))``
    is ``x``.

    Example::

        inverse_permutation(torch.tensor([2, 0, 1])).tolist()  # [1, 2, 0]
    """
    if perm.dim() != 1:
        raise ValueError(f"perm must be 1-d, got shape {tuple(perm.shape)}")
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv
