"""Procedural text-video data for the proxy model: captions and the videos they describe, made in code.

A caption reads ``"a {colour} {shape} moving {direction}"``. Its video shows that object crossing the frame in
that direction over a background that is textured, panned and zoomed by a moving camera, with up to two
distractor objects in muted colours (never a caption colour) that bounce off the borders and pass in front of
or behind the captioned object. Everything is drawn with tensor operations, on any device, deterministic from a
seed, and at any size: motion is defined over the clip's duration, so 9 and 17 frames show the same motion.

A fixed set of caption combinations is held out from training (``caption_split``); every colour, shape and
direction still occurs in training, only the combinations are new.

Example::

    train, held_out = caption_split()
    specs = sample_specs(train, 8, torch.Generator().manual_seed(0))
    video = render(specs, frames=9, height=32, width=32)      # [8, 3, 9, 32, 32] in -1..1
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Caption colours, RGB in 0..1: far apart, so a pixel's colour names at most one of them.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.85, 0.15),
    "blue": (0.15, 0.25, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.97, 0.97, 0.97),
    "cyan": (0.10, 0.90, 0.90),
    "magenta": (0.90, 0.10, 0.90),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit motion (x right, y down) in image coordinates
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# Distractors: dim, unsaturated colours that no caption colour is close to.
DISTRACTOR_COLOURS = ((0.45, 0.30, 0.15), (0.35, 0.35, 0.40), (0.30, 0.40, 0.25), (0.45, 0.25, 0.35))
HELD_OUT = 32  # caption combinations never seen in training


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """``(colour, shape, direction)`` of a caption made by ``caption``; ``ValueError`` naming the bad word."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        raise ValueError(f"caption {text!r} is not of the form 'a {{colour}} {{shape}} moving {{direction}}'")
    colour, shape, direction = words[1], words[2], words[4]
    for word, allowed, what in ((colour, COLOURS, "colour"), (shape, SHAPES, "shape"),
                                (direction, DIRECTIONS, "direction")):
        if word not in allowed:
            raise ValueError(f"caption {text!r}: {what} {word!r} is not one of {sorted(allowed)}")
    return colour, shape, direction


def all_combinations() -> list[tuple[str, str, str]]:
    return list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def caption_split(seed: int = 0) -> tuple[list[str], list[str]]:
    """(training captions, held-out captions). The held-out combinations are drawn so that every colour, shape
    and direction keeps most of its combinations in training."""
    combos = all_combinations()
    g = torch.Generator().manual_seed(seed)
    held: list[tuple[str, str, str]] = []
    # a balanced draw: cycle through colours and directions, pick a shape at random each time
    for i in range(HELD_OUT):
        colour = list(COLOURS)[i % len(COLOURS)]
        direction = list(DIRECTIONS)[(i // len(COLOURS) + i) % len(DIRECTIONS)]
        shapes = [s for s in SHAPES if (colour, s, direction) not in held]
        held.append((colour, shapes[int(torch.randint(len(shapes), (1,), generator=g))], direction))
    train = [caption(*c) for c in combos if c not in held]
    return train, [caption(*c) for c in held]


@dataclass
class VideoSpec:
    """Everything that determines one video; fields are per-video tensors of a batch (see ``sample_specs``)."""

    captions: list[str]
    colour: torch.Tensor  # [B, 3] object colour
    shape: torch.Tensor  # [B] index into SHAPES
    start: torch.Tensor  # [B, 2] object centre at t=0, fraction of the frame (x, y)
    velocity: torch.Tensor  # [B, 2] displacement over the clip, fraction of the frame
    size: torch.Tensor  # [B] object radius, fraction of the frame
    texture: torch.Tensor  # [B, 3, 8, 8] background texture (low resolution, upsampled when drawn)
    pan: torch.Tensor  # [B, 2] camera pan over the clip
    zoom: torch.Tensor  # [B] camera zoom factor at the clip's end (1 = none)
    d_colour: torch.Tensor  # [B, K, 3] distractors
    d_shape: torch.Tensor  # [B, K]
    d_start: torch.Tensor  # [B, K, 2]
    d_velocity: torch.Tensor  # [B, K, 2]
    d_size: torch.Tensor  # [B, K]
    d_present: torch.Tensor  # [B, K] bool
    d_front: torch.Tensor  # [B, K] bool: drawn over the captioned object


def sample_specs(captions: list[str], batch: int, generator: torch.Generator, distractors: int = 2) -> VideoSpec:
    """A batch of random videos for captions drawn uniformly from ``captions``."""

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    picks = torch.randint(len(captions), (batch,), generator=generator).tolist()
    chosen = [captions[i] for i in picks]
    parsed = [parse_caption(c) for c in chosen]
    colour = torch.tensor([COLOURS[c] for c, _, _ in parsed])
    colour = (colour + u(batch, 3, lo=-0.04, hi=0.04)).clamp(0, 1)
    shape = torch.tensor([SHAPES.index(s) for _, s, _ in parsed])
    direction = torch.tensor([DIRECTIONS[d] for _, _, d in parsed])
    size = u(batch, lo=0.10, hi=0.17)
    travel = u(batch, lo=0.30, hi=0.55)  # speeds differ
    velocity = direction * travel[:, None] + u(batch, 2, lo=-0.05, hi=0.05) * direction.flip(-1).abs()
    # start so that the whole path stays inside the frame (margin = size)
    lo = size[:, None] - velocity.clamp(max=0)
    hi = 1 - size[:, None] - velocity.clamp(min=0)
    start = lo + (hi - lo).clamp(min=0) * u(batch, 2)

    texture = _textures(batch, generator)
    pan = u(batch, 2, lo=-0.25, hi=0.25) * (u(batch, 1) < 0.6)
    zoom = torch.where(u(batch) < 0.3, u(batch, lo=0.8, hi=1.25), torch.ones(batch))

    k = distractors
    d_colour = torch.tensor(DISTRACTOR_COLOURS)[torch.randint(len(DISTRACTOR_COLOURS), (batch, k), generator=generator)]
    d_shape = torch.randint(len(SHAPES), (batch, k), generator=generator)
    d_size = u(batch, k, lo=0.07, hi=0.14)
    d_start = u(batch, k, 2, lo=0.1, hi=0.9)
    d_velocity = u(batch, k, 2, lo=-1.2, hi=1.2)  # fast ones bounce off the borders
    d_present = u(batch, k) < 0.5
    d_front = u(batch, k) < 0.5
    return VideoSpec(chosen, colour, shape, start, velocity, size, texture, pan, zoom,
                     d_colour, d_shape, d_start, d_velocity, d_size, d_present, d_front)


def _textures(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Dim, low-saturation backgrounds: smooth noise, stripes or a checkerboard over a base tone."""
    base = 0.08 + 0.17 * torch.rand(batch, 1, 1, 1, generator=generator)
    tint = 0.04 * torch.randn(batch, 3, 1, 1, generator=generator)
    noise = 0.06 * torch.randn(batch, 1, 8, 8, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    freq = torch.randint(1, 4, (batch, 1, 1, 1), generator=generator).float()
    stripes = 0.05 * torch.sin(math.pi * freq * (xx + yy) / 4)
    checker = 0.05 * (((xx // 2 + yy // 2) % 2) * 2 - 1).expand(batch, 1, 8, 8)
    kind = torch.randint(3, (batch, 1, 1, 1), generator=generator)
    pattern = torch.where(kind == 0, noise, torch.where(kind == 1, stripes.expand(batch, 1, 8, 8), checker))
    return (base + tint + pattern).clamp(0, 0.4)


def _shape_mask(shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, xx: torch.Tensor,
                yy: torch.Tensor, aa: float) -> torch.Tensor:
    """Anti-aliased coverage in 0..1 of shapes centred at (cx, cy) with radius r; inputs broadcast together.
    ``aa`` is the anti-aliasing width in frame units (about one pixel)."""
    dx, dy = (xx - cx) / r, (yy - cy) / r
    circle = torch.sqrt(dx * dx + dy * dy) - 1
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85
    # equilateral-ish triangle pointing up: three half-planes
    tri = torch.maximum(torch.maximum(-dy - 0.7, 0.866 * dx + 0.5 * dy - 0.45), -0.866 * dx + 0.5 * dy - 0.45)
    diamond = (dx.abs() + dy.abs()) - 1.05
    cross = torch.minimum(torch.maximum(dx.abs() - 1.0, dy.abs() - 0.33),
                          torch.maximum(dx.abs() - 0.33, dy.abs() - 1.0))
    sdf = torch.stack([circle, square, tri, diamond, cross])  # [5, ...] in units of r
    idx = shape.expand(sdf.shape[1:])[None].long()
    d = torch.gather(sdf, 0, idx)[0] * r
    return torch.clamp(0.5 - d / aa, 0.0, 1.0)


def _positions(start: torch.Tensor, velocity: torch.Tensor, size: torch.Tensor, t: torch.Tensor,
               bounce: bool) -> torch.Tensor:
    """Centres at times ``t`` [F] in 0..1: ``[..., F, 2]``. With ``bounce`` the path reflects off the borders."""
    p = start[..., None, :] + velocity[..., None, :] * t[:, None]
    if not bounce:
        return p
    lo = size[..., None, None]
    span = (1 - 2 * size)[..., None, None]
    x = (p - lo) % (2 * span)  # a triangle wave folds the path back inside [lo, 1 - lo]
    return lo + torch.where(x > span, 2 * span - x, x)


def render(spec: VideoSpec, frames: int, height: int, width: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Draw the videos of ``spec``: ``[B, 3, frames, height, width]`` float32 in -1..1."""
    dev = torch.device(device)
    b = spec.colour.shape[0]
    t = torch.linspace(0, 1, frames, device=dev)
    ys = (torch.arange(height, device=dev) + 0.5) / height
    xs = (torch.arange(width, device=dev) + 0.5) / width
    # square pixels: x in units of the frame width, y scaled so that shapes stay round on wide frames
    aspect = height / width
    yy = ys[:, None].expand(height, width) * aspect
    xx = xs[None, :].expand(height, width)
    aa = 1.0 / width

    # background: the texture seen through a camera that pans and zooms over the clip
    zoom = 1 + (spec.zoom.to(dev)[:, None] - 1) * t[None, :]  # [B, F]
    pan = spec.pan.to(dev)[:, None, :] * t[None, :, None]  # [B, F, 2]
    gx = (xs[None, None, None, :] * 2 - 1) / zoom[..., None, None] + pan[..., 0, None, None]
    gy = (ys[None, None, :, None] * 2 - 1) / zoom[..., None, None] + pan[..., 1, None, None]
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1).reshape(b, frames * height, width, 2)
    tex = spec.texture.to(dev)
    bg = F.grid_sample(tex, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    video = bg.reshape(b, 3, frames, height, width)

    def paint(video: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor, centres: torch.Tensor,
              size: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        cx = centres[..., 0][:, :, None, None]  # [B, F, 1, 1]
        cy = centres[..., 1][:, :, None, None] * aspect
        r = size[:, None, None, None]
        cover = _shape_mask(shape[:, None, None, None], cx, cy, r, xx, yy, aa) * on[:, None, None, None]
        return video * (1 - cover[:, None]) + colour[:, :, None, None, None] * cover[:, None]

    main = _positions(spec.start.to(dev), spec.velocity.to(dev), spec.size.to(dev), t, bounce=False)
    d_pos = _positions(spec.d_start.to(dev), spec.d_velocity.to(dev), spec.d_size.to(dev), t, bounce=True)
    ones = torch.ones(b, device=dev)
    for front in (False, True):  # distractors behind the object, the object, distractors in front
        for j in range(spec.d_shape.shape[1]):
            on = (spec.d_present[:, j] & (spec.d_front[:, j] == front)).to(dev).float()
            video = paint(video, spec.d_colour[:, j].to(dev), spec.d_shape[:, j].to(dev), d_pos[:, j],
                          spec.d_size[:, j].to(dev), on)
        if not front:
            video = paint(video, spec.colour.to(dev), spec.shape.to(dev), main, spec.size.to(dev), ones)
    return video * 2 - 1
