"""VideoLayout: the latent token grid of a video transformer's sequence (frame-major t, h, w).

HunyuanVideo orders its video tokens frame by frame, row by row after a 1x2x2 patchify, then appends the text
tokens. A pattern needs that grid to know which tokens are neighbours; the text length is read per call.

Example::

    layout = VideoLayout.from_video(129, 720, 1280)        # HunyuanVideo 720p: 33 x 45 x 80 latent tokens
    layout.num_tokens                                      # 118800 video tokens
    VideoLayout.from_video(9, 32, 32, vae_temporal=1, vae_spatial=1)   # a pixel-space model: 9 x 16 x 16
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VideoLayout:
    """Latent video tokens ``frames x height x width`` in raster order (token ``p = (t * height + y) * width + x``).

    Attributes:
        frames, height, width: the token grid after the VAE and the patchify, each >= 1.
    """

    frames: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("frames", "height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")

    @property
    def frame_tokens(self) -> int:
        """Tokens per frame (``height * width``)."""
        return self.height * self.width

    @property
    def num_tokens(self) -> int:
        """Video tokens (``frames * height * width``); text tokens, if any, follow them."""
        return self.frames * self.frame_tokens

    @classmethod
    def from_video(
        cls, num_frames: int, height: int, width: int, *, vae_temporal: int = 4, vae_spatial: int = 8,
        patch_t: int = 1, patch_hw: int = 2,
    ) -> "VideoLayout":
        """The grid of a video of ``num_frames x height x width`` pixels (defaults: HunyuanVideo's VAE and patchify).

        A causal video VAE keeps the first frame: ``(num_frames - 1) / vae_temporal + 1`` latent frames.
        """
        for name, v in (("vae_temporal", vae_temporal), ("vae_spatial", vae_spatial), ("patch_t", patch_t),
                        ("patch_hw", patch_hw)):
            if v < 1:
                raise ValueError(f"{name}={v} must be >= 1")
        if (num_frames - 1) % vae_temporal:
            raise ValueError(f"num_frames={num_frames} must be 1 + a multiple of vae_temporal={vae_temporal}")
        latent_t = (num_frames - 1) // vae_temporal + 1
        if latent_t % patch_t:
            raise ValueError(f"{latent_t} latent frames do not split into patches of {patch_t}")
        cell = vae_spatial * patch_hw
        if height % cell or width % cell:
            raise ValueError(f"height={height} and width={width} must be multiples of {cell} "
                             f"(vae_spatial={vae_spatial} x patch_hw={patch_hw})")
        return cls(latent_t // patch_t, height // cell, width // cell)

    def coords(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Per video token, ``[num_tokens]`` int64: ``t``, ``y``, ``x``, ``s`` (index in its frame), ``p`` (index)."""
        p = torch.arange(self.num_tokens, device=device)
        s = p % self.frame_tokens
        return {"t": p // self.frame_tokens, "y": s // self.width, "x": s % self.width, "s": s, "p": p}
