"""Fixed (input-independent) sparse patterns of the peers, as block masks over raster-order video tokens.

Each pattern is defined token by token (``allows``: may a query token attend a key token?) and turned into a
block mask by the rule FlexAttention's ``create_block_mask`` uses: a block pair is computed when any token pair
in it is allowed. Our block-sparse kernel has no token-level mask inside a block, so the block mask is a
superset of the peer's token mask; its density is what the kernel computes.

``video_block_keep`` builds the block mask from runs of consecutive keys: a query block is a run of raster
positions, so it splits into a few row pieces (or frame pieces), and every pattern maps a piece to the runs of
keys it reaches (no token-pair matrix; 720p in about a second). ``video_block_keep_reference`` is its twin:
``allows`` on every token pair.

Example::

    layout = VideoLayout(33, 45, 80)                          # 720p HunyuanVideo
    pattern = Window3D(radius=(3, 6, 10)) | FirstFrames(1)    # local 3D window plus the first frame's keys
    keep = video_block_keep(pattern, layout, block_size=128)  # [929, 929] bool, video blocks only
    keep.float().mean()                                       # density over video x video blocks
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ceil_div
from .layout import VideoLayout


@dataclass(frozen=True)
class Pieces:
    """Each query block cut at the boundaries of ``unit`` tokens (a row or a frame), ``[P]`` int64 each.

    Piece ``i`` belongs to query block ``block[i]`` and holds positions ``lo[i]..hi[i]`` of unit ``unit[i]``.
    """

    block: torch.Tensor
    unit: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @classmethod
    def of(cls, num_tokens: int, block_size: int, unit_size: int) -> "Pieces":
        vb = ceil_div(num_tokens, block_size)
        first = torch.arange(vb) * block_size
        last = torch.clamp(first + block_size, max=num_tokens) - 1
        u0 = first // unit_size
        count = last // unit_size - u0 + 1  # units each block touches
        block = torch.repeat_interleave(torch.arange(vb), count)
        rank = torch.arange(len(block)) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        unit = u0[block] + rank
        lo = torch.clamp(first[block] - unit * unit_size, min=0)
        hi = torch.clamp(last[block] - unit * unit_size, max=unit_size - 1)
        return cls(block, unit, lo, hi)


# Reached keys, as runs: (query block, first key, last key), raster positions, each [R] int64.
Runs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _around(p: Pieces, units: torch.Tensor, radius: int, unit_size: int, ok: torch.Tensor | None = None) -> Runs:
    """Runs covering positions ``lo - radius .. hi + radius`` of unit ``units[i, j]`` for every piece ``i``."""
    block = p.block[:, None].expand_as(units)
    lo = torch.clamp(p.lo - radius, min=0)[:, None].expand_as(units)
    hi = torch.clamp(p.hi + radius, max=unit_size - 1)[:, None].expand_as(units)
    keep = (units >= 0) if ok is None else ok
    base = units * unit_size
    return block[keep], (base + lo)[keep], (base + hi)[keep]


class StaticPattern:
    """A token-level attention pattern over the video grid; ``a | b`` is their union."""

    def allows(self, q: dict[str, torch.Tensor], k: dict[str, torch.Tensor], layout: VideoLayout,
               block_size: int) -> torch.Tensor:
        """Whether query tokens ``q`` may attend key tokens ``k`` (coordinates from ``VideoLayout.coords``,
        broadcast against each other)."""
        raise NotImplementedError

    def runs(self, layout: VideoLayout, block_size: int) -> Runs:
        """The runs of keys that each query block reaches (possibly overlapping)."""
        raise NotImplementedError

    def __or__(self, other: "StaticPattern") -> "Union":
        if not isinstance(other, StaticPattern):
            return NotImplemented
        return Union((self, other))


@dataclass(frozen=True)
class Union(StaticPattern):
    """Keys allowed by any of ``parts``."""

    parts: tuple[StaticPattern, ...]

    def __post_init__(self) -> None:
        flat: list[StaticPattern] = []
        for p in self.parts:
            if not isinstance(p, StaticPattern):
                raise TypeError(f"Union parts must be StaticPattern, got {type(p).__name__}")
            flat.extend(p.parts if isinstance(p, Union) else (p,))
        if not flat:
            raise ValueError("Union needs at least one pattern")
        object.__setattr__(self, "parts", tuple(flat))

    def allows(self, q, k, layout, block_size):
        out = self.parts[0].allows(q, k, layout, block_size)
        for p in self.parts[1:]:
            out = out | p.allows(q, k, layout, block_size)
        return out

    def runs(self, layout, block_size):
        parts = [p.runs(layout, block_size) for p in self.parts]
        return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]


def _check_radius(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    return value


@dataclass(frozen=True)
class Window3D(StaticPattern):
    """A 3D sliding window: keys within ``radius = (frames, rows, columns)`` of the query on every axis.

    The shape of Sliding Tile Attention (Zhang et al., 2025) and of 3D neighbourhood attention. STA slides
    over 3D tiles of tokens it first reorders; here the window is exact per token and the tokens stay in
    raster order, so a 128-token block (1-2 latent rows) pulls in the rows its window touches.
    """

    radius: tuple[int, int, int]

    def __post_init__(self) -> None:
        r = tuple(self.radius)
        if len(r) != 3:
            raise ValueError(f"radius={self.radius!r} must be (frames, rows, columns)")
        object.__setattr__(self, "radius", tuple(_check_radius(f"radius[{i}]", v) for i, v in enumerate(r)))

    def allows(self, q, k, layout, block_size):
        rt, ry, rx = self.radius
        return ((q["t"] - k["t"]).abs() <= rt) & ((q["y"] - k["y"]).abs() <= ry) & ((q["x"] - k["x"]).abs() <= rx)

    def runs(self, layout, block_size):
        # offsets past the grid reach nothing: clip them
        rt, ry = min(self.radius[0], layout.frames - 1), min(self.radius[1], layout.height - 1)
        rx = self.radius[2]
        p = Pieces.of(layout.num_tokens, block_size, layout.width)  # one piece per latent row
        t, y = p.unit // layout.height, p.unit % layout.height
        dt = torch.arange(-rt, rt + 1).repeat_interleave(2 * ry + 1)
        dy = torch.arange(-ry, ry + 1).repeat(2 * rt + 1)
        kt, ky = t[:, None] + dt, y[:, None] + dy
        ok = (kt >= 0) & (kt < layout.frames) & (ky >= 0) & (ky < layout.height)
        return _around(p, kt * layout.height + ky, rx, layout.width, ok)


@dataclass(frozen=True)
class Band(StaticPattern):
    """Keys within ``radius`` positions of the query in the raster order of the whole video.

    Sparse VideoGen's spatial head (Xi et al., 2025) on HunyuanVideo: a diagonal band about ``w`` frames wide
    (``radius = w * frame_tokens``), so each frame attends itself and its neighbours.
    """

    radius: int

    def __post_init__(self) -> None:
        _check_radius("radius", self.radius)

    def allows(self, q, k, layout, block_size):
        return (q["p"] - k["p"]).abs() <= self.radius

    def runs(self, layout, block_size):
        n = layout.num_tokens
        p = Pieces.of(n, block_size, n)  # one piece per block
        return _around(p, torch.zeros(len(p.block), 1, dtype=torch.long), self.radius, n)


@dataclass(frozen=True)
class Temporal(StaticPattern):
    """Keys of every frame within ``radius`` positions of the query's place in its frame (raster order).

    Sparse VideoGen's temporal head: the same spatial position (and its raster neighbours) across all frames.
    SVG makes this head dense by reordering tokens; in raster order it is a strided set of blocks.
    """

    radius: int

    def __post_init__(self) -> None:
        _check_radius("radius", self.radius)

    def allows(self, q, k, layout, block_size):
        return (q["s"] - k["s"]).abs() <= self.radius

    def runs(self, layout, block_size):
        p = Pieces.of(layout.num_tokens, block_size, layout.frame_tokens)  # one piece per frame
        frames = torch.arange(layout.frames).expand(len(p.block), -1)
        return _around(p, frames, self.radius, layout.frame_tokens)


@dataclass(frozen=True)
class FirstFrames(StaticPattern):
    """Every query may attend the keys of the first ``frames`` frames (an attention sink)."""

    frames: int = 1

    def __post_init__(self) -> None:
        if _check_radius("frames", self.frames) < 1:
            raise ValueError(f"frames={self.frames} must be >= 1")

    def allows(self, q, k, layout, block_size):
        return (k["t"] < self.frames) & (q["t"] >= 0)

    def runs(self, layout, block_size):
        vb = ceil_div(layout.num_tokens, block_size)
        last = min(self.frames, layout.frames) * layout.frame_tokens - 1
        return torch.arange(vb), torch.zeros(vb, dtype=torch.long), torch.full((vb,), last)


@dataclass(frozen=True)
class Radial(StaticPattern):
    """Radial Attention (Li et al., 2025), HunyuanVideo variant: attention that decays with frame distance.

    For query and key frames ``d`` apart: ``d <= 1`` attend the whole frame; else, with
    ``L = 2**bit_length(frame_tokens) / 2**bit_length(d)``, attend the keys within ``max(L * decay, block_size)``
    positions of the query's place in its frame, and only on frames where ``L >= block_size`` or
    ``d % int(block_size / L) == 0``. With ``sink``, every query also attends the first frame. This is the
    token mask of the authors' generator; they shrink it to blocks with a stricter rule (a block needs most of
    its columns well covered), we with "any pair", so our blocks are a superset of theirs.
    """

    decay: float = 1.0
    sink: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not self.decay > 0:
            raise ValueError(f"decay={self.decay!r} must be a number > 0")

    def frame_radius(self, d: int, layout: VideoLayout, block_size: int) -> int:
        """Keys allowed at frame distance ``d``: a radius in the frame's raster order, -1 for none."""
        n = layout.frame_tokens
        if d <= 1:
            return n - 1
        decay_length = 2 ** n.bit_length() / 2 ** d.bit_length()
        if decay_length < block_size and d % int(block_size / decay_length):
            return -1
        return min(n - 1, math.floor(max(decay_length * self.decay, block_size)))

    def _radii(self, layout: VideoLayout, block_size: int) -> torch.Tensor:
        return torch.tensor([self.frame_radius(d, layout, block_size) for d in range(layout.frames)])

    def allows(self, q, k, layout, block_size):
        d = (q["t"] - k["t"]).abs()
        out = (q["s"] - k["s"]).abs() <= self._radii(layout, block_size).to(d.device)[d]
        if self.sink:
            out = out | (k["t"] == 0)
        return out

    def runs(self, layout, block_size):
        p = Pieces.of(layout.num_tokens, block_size, layout.frame_tokens)  # one piece per frame
        radii = self._radii(layout, block_size)
        parts = []
        for r in radii.unique().tolist():  # the radius takes a few values (it halves as d doubles)
            if r < 0:
                continue
            kf = p.unit[:, None] + torch.arange(-layout.frames + 1, layout.frames)  # key frames
            inside = (kf >= 0) & (kf < layout.frames)
            ok = inside & (radii[(kf - p.unit[:, None]).abs().clamp(max=layout.frames - 1)] == r)
            parts.append(_around(p, kf, r, layout.frame_tokens, ok))
        if self.sink:
            parts.append(FirstFrames(1).runs(layout, block_size))
        return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]


def _check(pattern: StaticPattern, layout: VideoLayout, block_size: int) -> None:
    if not isinstance(pattern, StaticPattern):
        raise TypeError(f"pattern must be a StaticPattern, got {type(pattern).__name__}")
    if not isinstance(layout, VideoLayout):
        raise TypeError(f"layout must be a VideoLayout, got {type(layout).__name__}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 4 <= block_size <= 512:
        raise ValueError(f"block_size={block_size!r} is out of range: accepted 4..512")


def video_block_keep(pattern: StaticPattern, layout: VideoLayout, block_size: int) -> torch.Tensor:
    """``[VB, VB]`` bool over the blocks that hold video tokens (``VB = ceil(video tokens / block_size)``):
    True where some token pair of the (query block, key block) is allowed by ``pattern``.

    Text tokens are not part of it: ``assemble_mask`` adds them.
    """
    _check(pattern, layout, block_size)
    vb = ceil_div(layout.num_tokens, block_size)
    block, first, last = pattern.runs(layout, block_size)
    # mark key blocks first // B .. last // B of each run: +1 at the start, -1 past the end, prefix sum
    marks = torch.zeros(vb, vb + 1, dtype=torch.int32)
    ones = torch.ones(len(block), dtype=torch.int32)
    marks.index_put_((block, first // block_size), ones, accumulate=True)
    marks.index_put_((block, last // block_size + 1), -ones, accumulate=True)
    return marks.cumsum(1)[:, :vb] > 0


def video_block_keep_reference(pattern: StaticPattern, layout: VideoLayout, block_size: int) -> torch.Tensor:
    """Twin of ``video_block_keep``: ``pattern.allows`` on every token pair, then "any" per block pair."""
    _check(pattern, layout, block_size)
    n = layout.num_tokens
    vb = ceil_div(n, block_size)
    c = layout.coords()
    q = {name: v[:, None] for name, v in c.items()}
    k = {name: v[None, :] for name, v in c.items()}
    token = pattern.allows(q, k, layout, block_size).expand(n, n)
    padded = torch.nn.functional.pad(token, (0, vb * block_size - n, 0, vb * block_size - n))
    return padded.reshape(vb, block_size, vb, block_size).any(3).any(1)
