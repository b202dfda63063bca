"""Video frames: their accepted forms, their one conversion to uint8, and mp4 files (imageio + its ffmpeg).

Frames are ``[F, H, W, 3]``: float in [0, 1] (numpy or torch) or uint8 in [0, 255]. ``to_uint8`` is the only
float -> uint8 conversion in the package (``round(255 x)``, half to even): the mp4 writer and the metrics
that judge uint8 frames (VBench's temporal flickering) both use it, so they see the same pixels.

Example::

    write_mp4(frames, "out.mp4", fps=8)   # frames: [F, H, W, 3] float in 0..1 or uint8
    frames = read_mp4("out.mp4")          # [F, H, W, 3] uint8
    to_uint8(np.full((1, 2, 2, 3), 0.5))[0, 0, 0]   # array([128, 128, 128], dtype=uint8)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VideoLike = Any  # np.ndarray | torch.Tensor, [F, H, W, 3]
# Values this far outside [0, 1] are an error (wrong range, e.g. [-1, 1] VAE output), not rounding noise.
_RANGE_TOL = 1e-3


def to_float_video(video: VideoLike, name: str = "video") -> np.ndarray:
    """Return ``video`` as a float32 (float64 if given float64) numpy array ``[F, H, W, 3]`` in [0, 1].

    float32 keeps a 129-frame 720p clip near 1.4 GB; metrics accumulate per frame in float64.

    Accepts numpy arrays or torch tensors: uint8 (0..255) or floating (0..1). Raises ValueError naming the
    bad shape, dtype or range.

    Example::

        v = to_float_video(np.zeros((4, 32, 32, 3), np.uint8))   # float32 zeros
    """
    arr = _as_numpy(video)
    _check_shape(arr, name)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} has dtype {arr.dtype}; expected uint8 (0..255) or float (0..1)")
    if arr.dtype != np.float64:  # float64 input stays float64 (exact comparisons); half types widen
        arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values; expected finite floats in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(f"{name} values span [{lo:.4g}, {hi:.4g}]; expected floats in [0, 1] (or uint8 0..255)")
    return np.clip(arr, 0.0, 1.0) if (lo < 0.0 or hi > 1.0) else arr


def to_uint8(frames: VideoLike, name: str = "frames") -> np.ndarray:
    """``[F, H, W, 3]`` uint8 as a video file stores the frames: uint8 as given, float ``x`` -> ``round(255 x)``.

    Same accepted forms and errors as ``to_float_video``.

    Example::

        to_uint8(np.full((2, 8, 8, 3), 0.5, np.float32))[0, 0, 0]   # array([128, 128, 128], dtype=uint8)
    """
    arr = _as_numpy(frames)
    if arr.dtype == np.uint8:
        _check_shape(arr, name)
        return arr
    return np.rint(to_float_video(arr, name) * 255.0).astype(np.uint8)


def _as_numpy(video: VideoLike) -> np.ndarray:
    if hasattr(video, "detach") and hasattr(video, "cpu"):  # torch tensor, without importing torch here
        video = video.detach().cpu()
        if str(video.dtype) in ("torch.bfloat16", "torch.float16"):
            video = video.float()
        video = video.numpy()
    return np.asarray(video)


def _check_shape(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name} has shape {tuple(arr.shape)}; expected [F, H, W, 3] (RGB frames, channels last)")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name} has shape {tuple(arr.shape)}; every dimension must be >= 1")


def write_mp4(frames: VideoLike, path: str | Path, fps: int = 8) -> Path:
    """Write an H.264 mp4 of ``to_uint8(frames)``; height and width must be even (yuv420p)."""
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
