"""PixelVAE: the proxy model's "autoencoder": pixels are the latents (no compression, nothing to train).

The proxy diffuses directly in pixel space, so its pipeline needs a VAE whose decode is the identity: this
class has the interface ``HunyuanVideoPipeline`` uses (``config.scaling_factor``, the two compression ratios,
``decode``, tiling switches) and is saved and loaded by diffusers like any model (its ``model_index.json``
entry names this module).

Example::

    vae = PixelVAE()
    video = vae.decode(latents).sample        # == latents, [B, 3, F, H, W] in -1..1
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin


class PixelVAE(ModelMixin, AutoencoderMixin, ConfigMixin):
    """Identity autoencoder over RGB video in -1..1 (latent = pixels)."""

    @register_to_config
    def __init__(self, latent_channels: int = 3, scaling_factor: float = 1.0) -> None:
        super().__init__()
        self.spatial_compression_ratio = 1
        self.temporal_compression_ratio = 1
        self.use_tiling = False
        self.use_slicing = False
        # one saved value (diffusers' loader expects a weights file); it also gives the model a dtype and device
        self.register_buffer("gain", torch.ones(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        return (x,) if not return_dict else DecoderOutput(sample=x)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        z = (z * self.gain.to(z.dtype)).clamp(-1.0, 1.0)
        return (z,) if not return_dict else DecoderOutput(sample=z)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        return self.decode(sample, return_dict=return_dict)
