"""VBench-style quality dimensions of one generated video (no reference needed).

Definitions follow VBench (github.com/Vchitect/VBench, ``vbench/<dimension>.py``).

Always computed here, no weights, VBench's own formula:

- ``temporal_flickering`` (``vbench/temporal_flickering.py``): frames as uint8 0..255;
  ``mae_t = mean(|frame_t - frame_{t+1}|)`` over all pixels and channels; score ``= (255 - mean_t mae_t) / 255``.
  1.0 = static clip; higher = less flicker. Two differences from running VBench itself: (1) VBench reads the
  decoded .mp4 (codec noise included), this reads the frames before encoding, converted to uint8 exactly as
  the mp4 writer converts them (``video_io.to_uint8``: ``round(x * 255)``); (2) VBench's benchmark evaluates
  this dimension only on clips its static filter keeps, here it is reported for every clip, so compare dense
  vs sparse, not against the leaderboard.

Model-based, run through the installed ``vbench`` package (not a dependency of this project; detected
with ``importlib.util.find_spec``) only when every checkpoint it needs is already in a local weights
directory (``weights_dir=`` or env ``XATTN_VBENCH_WEIGHTS``), laid out like VBench's cache
(``~/.cache/vbench``; it becomes ``VBENCH_CACHE_DIR`` of a subprocess running VBench in ``local`` mode,
``custom_input`` mode, offline). Otherwise each is listed under ``skipped`` with the reason:

=========================  ==========================================================================
dimension                  files needed under the weights directory (VBench's paths)
=========================  ==========================================================================
subject_consistency        dino_model/dino_vitbase16_pretrain.pth, dino_model/facebookresearch_dino_main/
background_consistency     clip_model/ViT-B-32.pt
motion_smoothness          amt_model/amt-s.pth
aesthetic_quality          clip_model/ViT-L-14.pt, aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth
imaging_quality            pyiqa_model/musiq_spaq_ckpt-358bb6af.pth
dynamic_degree             raft_model/models/raft-things.pth
=========================  ==========================================================================

We check the files first because VBench itself would try to download (wget / git clone) anything missing.
``dynamic_degree`` of a single video is 0.0 or 1.0 (VBench scores "is it moving" per video).

Example::

    from xattn_video.metrics import vbench_dimensions
    dims = vbench_dimensions(video)           # video: [F, H, W, 3] float 0..1 or uint8
    dims["computed"]["temporal_flickering"]   # e.g. 0.987
    dims["skipped"]["aesthetic_quality"]      # e.g. "no VBench weights directory: ..."
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..video_io import VideoLike, to_uint8

VBENCH_ENV = "XATTN_VBENCH_WEIGHTS"

WEIGHT_FREE_DIMENSIONS = ("temporal_flickering",)

# Paths (relative to VBench's cache dir) that VBench's init_submodules(local=True) and loaders read.
MODEL_DIMENSIONS: Mapping[str, Sequence[str]] = {
    "subject_consistency": ("dino_model/dino_vitbase16_pretrain.pth", "dino_model/facebookresearch_dino_main/"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
}

ALL_DIMENSIONS = WEIGHT_FREE_DIMENSIONS + tuple(MODEL_DIMENSIONS)


def temporal_flickering(video: VideoLike) -> float:
    """VBench temporal flickering: ``(255 - mean_t MAE(frame_t, frame_{t+1})) / 255`` on uint8 frames.

    Needs at least 2 frames. 1.0 for a static clip.

    Example::

        v = np.zeros((3, 8, 8, 3), np.uint8); v[1] = 10; v[2] = 20
        temporal_flickering(v)   # (255 - 10) / 255
    """
    frames = to_uint8(video, "video")
    if frames.shape[0] < 2:
        raise ValueError(f"temporal_flickering needs >= 2 frames; got video of shape {tuple(frames.shape)}")
    # VBench: np.mean(cv2.absdiff(float32 a, float32 b)) per consecutive pair, then the mean over pairs
    maes = [
        float(np.mean(np.abs(frames[i].astype(np.float64) - frames[i + 1].astype(np.float64))))
        for i in range(frames.shape[0] - 1)
    ]
    return (255.0 - float(np.mean(maes))) / 255.0


# Runs in a subprocess: VBench reads VBENCH_CACHE_DIR at import and may call wget/git for missing files,
# so it gets its own environment (cache dir, offline flags) and cannot disturb this process.
_RUNNER = r"""
import json, os, sys, traceback
video, out_dir, device, dims = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
result = {"computed": {}, "errors": {}}
try:
    import vbench
    from vbench import VBench
    info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
except Exception as exc:
    result["errors"] = {d: "importing vbench failed: " + repr(exc) for d in dims}
    print("XATTN_VBENCH_RESULT " + json.dumps(result)); sys.exit(0)
for d in dims:
    try:
        sub = os.path.join(out_dir, d)
        bench = VBench(device, info, sub)
        bench.evaluate(videos_path=video, name="xattn", dimension_list=[d], local=True, mode="custom_input")
        with open(os.path.join(sub, "xattn_eval_results.json")) as f:
            res = json.load(f)[d]
        result["computed"][d] = float(res[0] if isinstance(res, (list, tuple)) else res)
    except Exception as exc:
        result["errors"][d] = "vbench raised " + "".join(traceback.format_exception_only(type(exc), exc)).strip()
print("XATTN_VBENCH_RESULT " + json.dumps(result))
"""


def _missing_files(weights_dir: Path, needed: Sequence[str]) -> List[str]:
    missing = []
    for rel in needed:
        p = weights_dir / rel
        if not (p.is_dir() if rel.endswith("/") else p.is_file()):
            missing.append(rel)
    return missing


def _run_vbench(
    frames: np.ndarray, weights_dir: Path, dims: List[str], device: str, fps: int, timeout_s: float
) -> Dict[str, Dict[str, Any]]:
    import imageio.v2 as imageio

    with tempfile.TemporaryDirectory(prefix="xattn_vbench_") as tmp:
        video_path = os.path.join(tmp, "video.mp4")
        try:
            # macro_block_size=1: never let imageio resize the frames (it would change what is scored)
            imageio.mimwrite(video_path, list(frames), fps=fps, macro_block_size=1)
        except Exception as exc:  # e.g. odd frame sizes that libx264/yuv420p refuses
            return {"computed": {}, "errors": {d: f"writing the .mp4 for vbench failed: {exc!r}" for d in dims}}
        env = dict(os.environ)
        env.update(
            VBENCH_CACHE_DIR=str(weights_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
            TORCH_HOME=str(weights_dir / "torch"),
        )
        cmd = [sys.executable, "-c", _RUNNER, video_path, os.path.join(tmp, "out"), device, ",".join(dims)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"computed": {}, "errors": {d: f"vbench timed out after {timeout_s:.0f} s" for d in dims}}
        for line in proc.stdout.splitlines()[::-1]:
            if line.startswith("XATTN_VBENCH_RESULT "):
                return json.loads(line[len("XATTN_VBENCH_RESULT "):])
        tail = (proc.stderr or proc.stdout).strip()[-400:]
        return {"computed": {}, "errors": {d: f"vbench subprocess exited {proc.returncode}: {tail}" for d in dims}}


def vbench_dimensions(
    video: VideoLike,
    weights_dir: Optional[Union[str, Path]] = None,
    dimensions: Optional[Sequence[str]] = None,
    device: str = "cpu",
    fps: int = 24,
    timeout_s: float = 3600.0,
) -> Dict[str, Dict[str, Any]]:
    """VBench dimensions of ``video``: ``{"computed": {name: score}, "skipped": {name: reason}}``.

    ``weights_dir`` (default env ``XATTN_VBENCH_WEIGHTS``): local VBench cache for the model-based
    dimensions. ``dimensions``: subset of ``ALL_DIMENSIONS`` (default: all). ``fps`` is written into the
    temporary .mp4 VBench reads (``dynamic_degree`` samples frames by fps).

    Example::

        vbench_dimensions(video)["computed"]   # {"temporal_flickering": 0.98...}
    """
    wanted = list(ALL_DIMENSIONS if dimensions is None else dimensions)
    unknown = [d for d in wanted if d not in ALL_DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {unknown}; accepted: {list(ALL_DIMENSIONS)}")
    if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
        raise ValueError(f"fps={fps!r}; expected a positive integer")
    frames = to_uint8(video, "video")
    computed: Dict[str, float] = {}
    skipped: Dict[str, str] = {}

    if "temporal_flickering" in wanted:
        if frames.shape[0] < 2:
            skipped["temporal_flickering"] = f"needs >= 2 frames, video has {frames.shape[0]}"
        else:
            computed["temporal_flickering"] = temporal_flickering(frames)

    model_dims = [d for d in wanted if d in MODEL_DIMENSIONS]
    if not model_dims:
        return {"computed": computed, "skipped": skipped}
    root = weights_dir if weights_dir is not None else os.environ.get(VBENCH_ENV)
    ready: List[str] = []
    if importlib.util.find_spec("vbench") is None:
        for d in model_dims:
            skipped[d] = "the `vbench` package is not installed (needed for model-based dimensions)"
    elif not root:
        for d in model_dims:
            skipped[d] = f"no VBench weights directory: pass weights_dir=PATH or set {VBENCH_ENV}"
    elif not Path(root).expanduser().is_dir():
        for d in model_dims:
            skipped[d] = f"VBench weights directory not found: {root}"
    else:
        root_path = Path(root).expanduser().resolve()
        for d in model_dims:
            missing = _missing_files(root_path, MODEL_DIMENSIONS[d])
            if missing:
                skipped[d] = f"missing under {root_path}: {', '.join(missing)} (never downloaded)"
            else:
                ready.append(d)
        if ready:
            res = _run_vbench(frames, root_path, ready, device, fps, timeout_s)
            for d in ready:
                if d in res.get("computed", {}):
                    computed[d] = float(res["computed"][d])
                else:
                    skipped[d] = res.get("errors", {}).get(d, "vbench returned no score")
    return {"computed": computed, "skipped": skipped}
