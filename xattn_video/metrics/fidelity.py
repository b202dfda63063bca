"""Fidelity of a sparse-attention video against the dense-attention video of the same prompt and seed.

Metrics, per frame and mean over frames (reference = dense video, test = XAttention video):

- **PSNR** (dB, higher is better), peak 1.0: ``10 * log10(1 / MSE)``. A frame with MSE = 0 has PSNR
  ``float("inf")``; the mean over frames is then ``inf`` too. ``video_psnr`` is the PSNR of the MSE over the
  whole clip (finite unless the clips are identical). In ``report.json`` the report writer stores every
  non-finite number as the string ``"inf"`` / ``"-inf"`` / ``"nan"`` (strict JSON has no Infinity) and the
  top-level ``identical`` flag says whether the two videos are bit-for-bit equal after conversion to float.
- **SSIM** (1 = identical): scikit-image's ``structural_similarity`` on RGB frames (``channel_axis=-1``,
  ``data_range=1``, default 7×7 uniform window); frames must be at least 7×7.
- **LPIPS** (AlexNet, v0.1; 0 = identical, lower is better): only when the ``lpips`` package is importable
  and a local torchvision AlexNet state dict is given (``lpips_weights=PATH`` or env ``XATTN_LPIPS_WEIGHTS``).
  LPIPS' own linear heads ship inside the ``lpips`` package; the AlexNet backbone would otherwise be
  downloaded by torchvision, which this project never does. Without both, the result is
  ``{"available": False, "reason": ...}``: never a number from untrained weights.

Videos are ``[F, H, W, 3]``: float in [0, 1] (numpy or torch), or uint8 in [0, 255].

Example::

    from xattn_video.metrics import fidelity_report
    rep = fidelity_report(dense_frames, sparse_frames)
    print(rep["psnr"]["mean"], rep["ssim"]["mean"], rep["lpips"])
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..video_io import VideoLike, to_float_video  # noqa: F401 - to_float_video is re-exported

LPIPS_ENV = "XATTN_LPIPS_WEIGHTS"


def _pair(reference: VideoLike, test: VideoLike) -> tuple[np.ndarray, np.ndarray]:
    ref = to_float_video(reference, "reference_video")
    tst = to_float_video(test, "test_video")
    if ref.shape != tst.shape:
        raise ValueError(
            f"reference_video shape {tuple(ref.shape)} != test_video shape {tuple(tst.shape)}; "
            "the two videos must have the same [F, H, W, 3]"
        )
    return ref, tst


def psnr_per_frame(reference: VideoLike, test: VideoLike) -> List[float]:
    """PSNR in dB of every frame of ``test`` against ``reference`` (peak 1.0); ``inf`` for identical frames.

    Example::

        psnr_per_frame(v, np.clip(v + 0.1, 0, 1))   # ~[20.0, ...] where no clipping happens
    """
    ref, tst = _pair(reference, test)
    return [_psnr(m) for m in _mse_per_frame(ref, tst)]


def video_psnr(reference: VideoLike, test: VideoLike) -> float:
    """PSNR in dB of the MSE over the whole clip (peak 1.0); ``inf`` only when the clips are identical.

    Example::

        video_psnr(dense, sparse)    # one number per video, finite where a frame mean could be inf
    """
    ref, tst = _pair(reference, test)
    return _psnr(float(np.mean(_mse_per_frame(ref, tst))))  # equal frame sizes: the mean is the clip's MSE


def _mse_per_frame(ref: np.ndarray, tst: np.ndarray) -> List[float]:
    # frame by frame in float64: exact enough for PSNR > 100 dB, and no full-clip float64 temporaries
    return [float(np.mean((r.astype(np.float64) - t.astype(np.float64)) ** 2)) for r, t in zip(ref, tst)]


def _psnr(mse: float) -> float:
    return math.inf if mse == 0.0 else float(10.0 * math.log10(1.0 / mse))


def ssim_per_frame(reference: VideoLike, test: VideoLike) -> List[float]:
    """SSIM of every RGB frame (scikit-image ``structural_similarity``, ``data_range=1``); 1.0 = identical.

    Example::

        ssim_per_frame(v, v)   # [1.0, 1.0, ...]
    """
    from skimage.metrics import structural_similarity  # optional dependency: the `metrics` extra

    ref, tst = _pair(reference, test)
    if min(ref.shape[1], ref.shape[2]) < 7:
        raise ValueError(f"frames are {ref.shape[1]}x{ref.shape[2]}; SSIM's 7x7 window needs frames >= 7x7")
    return [
        float(structural_similarity(r.astype(np.float64), t.astype(np.float64), channel_axis=-1, data_range=1.0))
        for r, t in zip(ref, tst)
    ]


# Which features.N of torchvision's AlexNet go into which lpips slice (lpips.pretrained_networks.alexnet).
_ALEX_SLICES = ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12)))


def _alexnet_to_lpips_keys(state: Dict[str, Any]) -> Dict[str, Any]:
    """Map a torchvision AlexNet state dict (``features.3.weight``) onto lpips' slices (``slice2.3.weight``)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features":
            continue  # classifier layers are not used by LPIPS
        idx = int(parts[1])
        for slice_no, members in _ALEX_SLICES:
            if idx in members:
                out[f"slice{slice_no}.{idx}.{parts[2]}"] = value
    return out


def lpips_per_frame(
    reference: VideoLike, test: VideoLike, lpips_weights: Optional[Union[str, Path]] = None, device: str = "cpu"
) -> Dict[str, Any]:
    """LPIPS (AlexNet) per frame, or ``{"available": False, "reason": ...}`` when it cannot be computed honestly.

    ``lpips_weights``: path to a torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth``); default: env
    ``XATTN_LPIPS_WEIGHTS``. Returns ``{"available": True, "net": "alex", "weights": str, "per_frame": [...],
    "mean": float}`` on success.

    Example::

        lpips_per_frame(v1, v2, lpips_weights="~/weights/alexnet-owt-7be5be79.pth")["mean"]
    """
    ref, tst = _pair(reference, test)
    path = lpips_weights if lpips_weights is not None else os.environ.get(LPIPS_ENV)
    if not path:
        return {
            "available": False,
            "reason": f"no AlexNet weights given (pass lpips_weights=PATH or set {LPIPS_ENV}); "
            "they are never downloaded",
        }
    path = Path(path).expanduser()
    if not path.is_file():
        return {"available": False, "reason": f"LPIPS weights file not found: {path}"}
    try:
        import lpips  # optional; not a dependency of this package
    except ImportError:
        return {"available": False, "reason": "the `lpips` package is not installed (pip install lpips)"}
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    backbone = _alexnet_to_lpips_keys(state)
    if len(backbone) != 10:  # 5 conv layers x (weight, bias)
        return {
            "available": False,
            "reason": f"{path} is not a torchvision AlexNet state dict (found {len(backbone)} of 10 conv tensors)",
        }
    # pnet_rand=True: lpips builds AlexNet without asking torchvision to download it; we load the local copy.
    # Its linear heads (v0.1, shipped in the package) still load because pretrained=True.
    with warnings.catch_warnings():  # torchvision's deprecation notes about lpips' `pretrained=False` call
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    model.net.load_state_dict(backbone, strict=True)
    model = model.to(device).eval()
    values: List[float] = []
    with torch.no_grad():
        for r, t in zip(ref, tst):
            # lpips expects [N, 3, H, W] in [-1, 1]
            rt = torch.from_numpy(r).permute(2, 0, 1)[None].float().to(device) * 2 - 1
            tt = torch.from_numpy(t).permute(2, 0, 1)[None].float().to(device) * 2 - 1
            values.append(float(model(rt, tt).flatten()[0]))
    return {"available": True, "net": "alex", "weights": str(path), "per_frame": values,
            "mean": float(np.mean(values))}


def _mean(values: List[float]) -> float:
    return math.inf if any(math.isinf(v) for v in values) else float(np.mean(values))


def fidelity_report(
    reference_video: VideoLike, test_video: VideoLike, lpips_weights: Optional[Union[str, Path]] = None
) -> Dict[str, Any]:
    """PSNR, SSIM and LPIPS of ``test_video`` against ``reference_video``, per frame and mean.

    Returns::

        {"num_frames": F, "height": H, "width": W,
         "identical": bool,                 # every pixel equal (after conversion to float in [0, 1])
         "max_abs_diff": float,             # largest |difference| of any pixel, 0..1
         "psnr": {"per_frame": [dB | inf], "mean": dB | inf, "video_psnr": dB | inf, "identical_frames": int},
         "ssim": {"per_frame": [...], "mean": float},
         "lpips": {"available": True, "net": "alex", "weights": str, "per_frame": [...], "mean": float}
                | {"available": False, "reason": str}}

    Example::

        rep = fidelity_report(dense, sparse)   # dense, sparse: [F, H, W, 3] float in [0, 1] or uint8
    """
    ref, tst = _pair(reference_video, test_video)
    mse = _mse_per_frame(ref, tst)
    psnr = [_psnr(m) for m in mse]
    total_mse = float(np.mean(mse))  # frames have equal size, so this is the MSE over the whole clip
    ssim = ssim_per_frame(ref, tst)
    max_abs = max(float(np.abs(r - t).max()) for r, t in zip(ref, tst))
    return {
        "num_frames": int(ref.shape[0]),
        "height": int(ref.shape[1]),
        "width": int(ref.shape[2]),
        "identical": bool(np.array_equal(ref, tst)),
        "max_abs_diff": max_abs,
        "psnr": {
            "per_frame": psnr,
            "mean": _mean(psnr),
            "video_psnr": _psnr(total_mse),
            "identical_frames": int(sum(math.isinf(v) for v in psnr)),
        },
        "ssim": {"per_frame": ssim, "mean": float(np.mean(ssim))},
        "lpips": lpips_per_frame(ref, tst, lpips_weights),
    }
