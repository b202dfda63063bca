"""One float -> uint8 conversion: the frames the mp4 writer stores are the frames the metrics score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattn_video.metrics import temporal_flickering
from xattn_video.video_io import to_uint8, write_mp4

# float32 values whose x * 255 is exactly k + 0.5 with k even: round-half-up and round-half-even disagree
TIES = ((np.arange(0, 255, 2) + 0.5) / 255).astype(np.float32)


def _written_frames(frames, monkeypatch, tmp_path) -> np.ndarray:
    """What write_mp4 hands to the encoder."""
    seen = []
    monkeypatch.setattr("imageio.v2.mimwrite", lambda path, data, **kw: seen.append(np.stack(data)))
    write_mp4(frames, tmp_path / "v.mp4")
    return seen[0]


def test_writer_and_metrics_see_the_same_pixels(monkeypatch, tmp_path):
    assert (TIES * np.float32(255) == np.arange(0, 255, 2) + 0.5).all()
    video = np.zeros((2, 8, 16, 3), np.float32)
    video[0] = np.resize(TIES, (8, 16, 3))  # frame 1 stays black: the flicker is frame 0's pixel values
    written = _written_frames(video, monkeypatch, tmp_path)
    assert written.dtype == np.uint8
    assert np.array_equal(written, to_uint8(video))
    assert temporal_flickering(video) == temporal_flickering(written)
    # round(255 x), half to even (numpy's and diffusers' rounding): 0.5 / 255 -> 0, 2.5 / 255 -> 2
    assert written[0].reshape(-1)[:3].tolist() == [0, 2, 4]


def test_to_uint8_forms_and_errors():
    rng = np.random.default_rng(0)
    v = rng.random((3, 4, 6, 3)).astype(np.float32)
    want = np.rint(v * 255).astype(np.uint8)
    assert np.array_equal(to_uint8(v), want)
    assert np.array_equal(to_uint8(torch.from_numpy(v).half()), np.rint(v.astype(np.float16).astype(np.float32)
                                                                             * 255).astype(np.uint8))
    assert to_uint8(want) is want  # uint8 passes through
    assert np.array_equal(to_uint8(v + 5e-4), np.rint(np.clip(v + 5e-4, 0, 1) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"frames values span \[-0\.99.*expected floats in \[0, 1\]"):
        to_uint8(2 * v - 1)  # a [-1, 1] VAE output is an error, not silently clipped
    bad = v.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_mp4(bad, "never-written.mp4")
    with pytest.raises(ValueError, match=r"shape \(4, 6, 3\)"):
        to_uint8(want[0])
    with pytest.raises(ValueError, match="dtype int64"):
        to_uint8(want.astype(np.int64))
