"""Does a generated video follow its caption? The captioned colour's centroid must move the captioned way.

Measured on decoded frames: pixels close to the caption's colour form a mask; its centroid is averaged over the
first two and the last two frames. The video follows ``"a {colour} {shape} moving {direction}"`` when that
colour is visible as one compact object (in at least half of the frames) and its centroid moves at least
``min_move`` of the frame along the captioned direction, more than it moves across it. Shape is not judged.

Example::

    result = follows_caption(video, "a red circle moving right")     # video [F, H, W, 3] in 0..1
    result.followed, result.along, result.across
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import COLOURS, DIRECTIONS, parse_caption

COLOUR_TOLERANCE = 0.28  # max per-channel distance of a pixel to the caption colour
MIN_PIXELS = 0.002  # a frame shows the colour when this fraction of its pixels has it (at least 2 pixels)
MAX_SPREAD = 0.2  # ... and those pixels form one compact object (RMS distance to their centroid, frame units)


@dataclass(frozen=True)
class FollowResult:
    caption: str
    followed: bool
    visible_frames: float  # fraction of frames where the colour is visible
    along: float  # centroid displacement along the captioned direction, fraction of the frame
    across: float  # |displacement| across it
    centroids: list  # per frame (x, y) as fractions of the frame, None where not visible


def colour_centroids(video: np.ndarray, colour: str) -> list[tuple[float, float] | None]:
    """Per frame, the (x, y) centroid (fractions of width and height) of pixels near ``colour``; None where
    too few pixels have the colour, or they are scattered (noise, not an object)."""
    frames = np.asarray(video, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video must be [F, H, W, 3] in 0..1, got shape {frames.shape}")
    target = np.asarray(COLOURS[colour], dtype=np.float32)
    near = np.abs(frames - target).max(-1) <= COLOUR_TOLERANCE  # [F, H, W]
    _, h, w = near.shape
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    out: list[tuple[float, float] | None] = []
    for m in near:
        n = int(m.sum())
        if n < max(2, MIN_PIXELS * h * w):
            out.append(None)
            continue
        cx, cy = float((m.sum(0) * xs).sum() / n), float((m.sum(1) * ys).sum() / n)
        spread = ((m.sum(0) * (xs - cx) ** 2).sum() + (m.sum(1) * (ys - cy) ** 2).sum()) / n
        out.append((cx, cy) if spread <= MAX_SPREAD**2 else None)
    return out


def follows_caption(video: np.ndarray, text: str, min_move: float = 0.05) -> FollowResult:
    """Judge one ``[F, H, W, 3]`` video (0..1) against its caption (see the module docstring)."""
    colour, _, direction = parse_caption(text)
    cents = colour_centroids(video, colour)
    seen = [c for c in cents if c is not None]
    visible = len(seen) / len(cents)
    first = [c for c in cents[:2] if c is not None]
    last = [c for c in cents[-2:] if c is not None]
    if visible < 0.5 or not first or not last:
        return FollowResult(text, False, visible, 0.0, 0.0, cents)
    move = np.mean(last, axis=0) - np.mean(first, axis=0)
    d = np.asarray(DIRECTIONS[direction])
    along = float(move @ d)
    across = float(abs(move @ np.array([-d[1], d[0]])))
    return FollowResult(text, along >= min_move and along > across, visible, along, across, cents)


def follow_rate(videos: list[np.ndarray], captions: list[str]) -> float:
    """Fraction of ``videos`` that follow their captions."""
    if len(videos) != len(captions) or not videos:
        raise ValueError(f"need one caption per video, got {len(videos)} videos and {len(captions)} captions")
    return sum(follows_caption(v, c).followed for v, c in zip(videos, captions)) / len(videos)
