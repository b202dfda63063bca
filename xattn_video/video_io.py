"""Reading and writing mp4 videos (imageio + its bundled ffmpeg).

Example::

    write_mp4(frames, "out.mp4", fps=8)   # frames: [F, H, W, 3] float in 0..1 or uint8
    frames = read_mp4("out.mp4")          # [F, H, W, 3] uint8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] float in 0..1 (or uint8) -> uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Write an H.264 mp4; height and width must be even (yuv420p)."""
    import imageio.v2 as imageio

    data = to_uint8(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1 keeps the exact size (imageio would otherwise resize to multiples of 16)
    imageio.mimwrite(path, list(data), fps=fps, codec="libx264", macro_block_size=1, quality=9)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of a video file as [F, H, W, 3] uint8."""
    import imageio.v2 as imageio

    return np.stack(imageio.mimread(path, memtest=False))
