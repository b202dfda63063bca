"""Quality metrics for finished videos: fidelity of the sparse video vs the dense one, and VBench dimensions.

Imports nothing from the attention code: metrics judge videos, whatever produced them.

Example::

    from xattn_video.metrics import fidelity_report, vbench_dimensions
    fid = fidelity_report(dense_frames, sparse_frames)          # PSNR / SSIM / LPIPS
    dims = vbench_dimensions(sparse_frames)                     # {"computed": ..., "skipped": ...}
"""

from .fidelity import (fidelity_report, lpips_per_frame, psnr_per_frame, ssim_per_frame, to_float_video,
                       video_psnr)
from .vbench import ALL_DIMENSIONS, MODEL_DIMENSIONS, WEIGHT_FREE_DIMENSIONS, temporal_flickering, vbench_dimensions

__all__ = [
    "fidelity_report",
    "psnr_per_frame",
    "video_psnr",
    "ssim_per_frame",
    "lpips_per_frame",
    "to_float_video",
    "vbench_dimensions",
    "temporal_flickering",
    "ALL_DIMENSIONS",
    "MODEL_DIMENSIONS",
    "WEIGHT_FREE_DIMENSIONS",
]
