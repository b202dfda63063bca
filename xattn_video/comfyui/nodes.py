"""ComfyUI nodes: a native MODEL patch, and nodes around the add-on's own diffusers pipeline.

Native (works with ComfyUI's own HunyuanVideo loader, sampler and VAE nodes):

- ``XAttentionHunyuanVideo``: MODEL -> patched MODEL clone (joint attention of double/single blocks via XAttention).

Pipeline (self-contained: diffusers HunyuanVideo from a local folder, or the embedded proxy model, trained here on
procedural video):

- ``XAttentionLoadPipeline`` -> ``XATTN_PIPE``
- ``XAttentionConfig`` -> ``XATTN_CONFIG``
- ``XAttentionApply``: ``XATTN_PIPE`` + ``XATTN_CONFIG`` -> ``XATTN_PIPE`` that samples with XAttention
- ``XAttentionSample``: ``XATTN_PIPE`` + prompt -> ``IMAGE`` frames ``[F, H, W, 3]`` in 0..1
- ``XAttentionCompare`` (output node): dense vs sparse with the same seed -> both videos, a JSON report and a
  summary shown on the node (speedup, density, PSNR/SSIM).

Nothing here imports ComfyUI or diffusers at import time; nodes import what they need when they run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import BACKENDS, PRECISIONS, RESIDUAL_PRECISIONS, XAttentionConfig

logger = logging.getLogger("xattn_video")

CATEGORY = "xattention"
PIPE_TYPE = "XATTN_PIPE"
CONFIG_TYPE = "XATTN_CONFIG"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _config_inputs() -> dict[str, Any]:
    """The XAttention knobs shared by the native node and the config node (ranges match XAttentionConfig)."""
    return {
        "threshold": ("FLOAT", {
            "default": 0.9, "min": 0.01, "max": 1.0, "step": 0.01,
            "tooltip": "tau in (0, 1]: per query-block row keep the fewest key blocks whose estimated attention "
                       "mass reaches tau. 1.0 = dense (exact); lower = sparser and faster.",
        }),
        "stride": ("INT", {
            "default": 16, "min": 1, "max": 64,
            "tooltip": "Antidiagonal stride S of the estimate (the paper uses 8 or 16); must divide block_size.",
        }),
        "block_size": ("INT", {
            "default": 128, "min": 16, "max": 256, "step": 16,
            "tooltip": "Side of the square attention blocks in tokens (128 for the Triton kernels).",
        }),
        "warmup_steps": ("INT", {
            "default": 5, "min": 0, "max": 1000,
            "tooltip": "The first denoising steps run dense attention (layout forms early).",
        }),
        "max_density": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "Optional cap on the fraction of key blocks kept per query-block row (a speed budget). "
                       "0 = no cap.",
        }),
        "keep_text": ("BOOLEAN", {
            "default": True,
            "tooltip": "Text tokens are always attended to, and attend densely themselves.",
        }),
    }


_DENSE_LAYERS_INPUT = ("STRING", {
    "default": "",
    "tooltip": "Block indices kept dense (0-based over the double, then the single blocks), e.g. '0, 1, 38-39'.",
})
_PRECISION_INPUT = (list(PRECISIONS), {
    "default": "native",
    "tooltip": "Arithmetic of the sparse attention: native (the model's dtype), int8-fp8 (about 1.5x faster on "
               "Hopper, output cosine ~0.9995 to native) or fp8 (a little faster, less accurate). Needs a GPU "
               "with fp8 tensor cores (RTX 40xx, H100 or newer).",
})
_MASK_REUSE_INPUT = ("INT", {
    "default": 1, "min": 1, "max": 50,
    "tooltip": "Reuse each layer's block mask for this many sparse steps (1 = estimate every step). Masks are "
               "kept bit-packed and freed after their last use.",
})
_RESIDUAL_INPUT = ("INT", {
    "default": -1, "min": -1, "max": 100,
    "tooltip": "Add back what the masks leave out, measured at a dense step: -1 = off; 0 = measured at the last "
               "warmup step only; N = and again after every N sparse steps (that step runs dense). Holds one "
               "attention output per layer (HunyuanVideo 720p: 41 GiB; 21 GiB with residual_precision fp8); "
               "mask_reuse_steps must be 1.",
})
_RESIDUAL_PRECISION_INPUT = (list(RESIDUAL_PRECISIONS), {
    "default": "native",
    "tooltip": "How the residual's differences are held: native (the model's dtype) or fp8 (half the memory; "
               "the same PSNR on the proxy model).",
})


def residual_fields(residual_refresh: int, residual_precision: str = "native") -> dict[str, Any]:
    """The node inputs ``residual_refresh`` (-1 off, 0 warmup only, N every N sparse steps) and
    ``residual_precision`` as config fields."""
    value = int(residual_refresh)
    if value < -1:
        raise ValueError(f"residual_refresh={value} is out of range: accepted -1 (off), 0 or a positive number of steps")
    return {"residual": value >= 0, "residual_refresh": max(value, 0), "residual_precision": residual_precision}


def make_config(threshold: float, stride: int, block_size: int, warmup_steps: int, max_density: float,
                keep_text: bool, **extra: Any) -> XAttentionConfig:
    """An ``XAttentionConfig`` from node inputs (``max_density`` 0 = off).

    Raises:
        ValueError: a value is out of range; the message names it and the accepted range.
    """
    if isinstance(max_density, (int, float)) and not isinstance(max_density, bool) and max_density < 0:
        raise ValueError(f"max_density={max_density!r} is out of range: accepted 0 (off) or (0, 1]")
    return XAttentionConfig(
        threshold=threshold, stride=int(stride), block_size=int(block_size), warmup_steps=int(warmup_steps),
        max_density=None if max_density == 0 else max_density, keep_text=bool(keep_text), **extra,
    )


def parse_dense_layers(text: str) -> tuple[int, ...]:
    """``"0, 1, 5-7"`` -> ``(0, 1, 5, 6, 7)``; empty -> ``()``.

    Raises:
        ValueError: an entry is not a non-negative integer or range; the message names it.
    """
    out: list[int] = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo < 0 or hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                i = int(part)
                if i < 0:
                    raise ValueError
                out.append(i)
        except ValueError:
            raise ValueError(
                f"dense_layers entry {part!r} is not a block index or range (accepted e.g. '0, 1, 5-7')"
            ) from None
    return tuple(sorted(set(out)))


# -- native ------------------------------------------------------------------------------------------------

class XAttentionHunyuanVideo:
    """Patch ComfyUI's native HunyuanVideo or Wan MODEL so its self-attention runs XAttention.

    Returns a clone; the input MODEL is untouched. The token refiner (HunyuanVideo), cross-attention (Wan) and
    short sequences keep ComfyUI's attention. The clone carries ``xattention_runtime`` (its run record: per-call densities and decisions).
    """

    DESCRIPTION = ("Block-sparse XAttention for ComfyUI's native HunyuanVideo and Wan 2.1 / 2.2 models: "
                   "HunyuanVideo's video+text joint attention of every double and single block, or Wan's "
                   "self-attention over the video tokens (its cross-attention stays dense), keeps only the key "
                   "blocks the antidiagonal estimate selects. Returns a patched copy of the model.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "A HunyuanVideo or Wan 2.1 / 2.2 model (e.g. from Load Diffusion Model)."}),
            **_config_inputs(),
        }, "optional": {"dense_layers": _DENSE_LAYERS_INPUT, "mask_reuse_steps": _MASK_REUSE_INPUT,
                        "precision": _PRECISION_INPUT, "residual_refresh": _RESIDUAL_INPUT,
                        "residual_precision": _RESIDUAL_PRECISION_INPUT}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with XAttention in its video self-attention (a clone).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY

    def patch(self, model: Any, threshold: float, stride: int, block_size: int, warmup_steps: int,
              max_density: float, keep_text: bool, dense_layers: str = "", mask_reuse_steps: int = 1,
              precision: str = "native", residual_refresh: int = -1,
              residual_precision: str = "native") -> tuple[Any]:
        from .native import patch_model

        config = make_config(threshold, stride, block_size, warmup_steps, max_density, keep_text,
                             dense_layers=parse_dense_layers(dense_layers), mask_reuse_steps=int(mask_reuse_steps),
                             precision=precision, **residual_fields(residual_refresh, residual_precision))
        patched, _ = patch_model(model, config)
        return (patched,)


# -- pipeline ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class XAttnPipe:
    """What flows along an ``XATTN_PIPE`` link: a diffusers pipeline and the XAttention config to sample with.

    The diffusers pipeline is shared (ComfyUI caches node outputs), so nodes never patch it for longer than
    one sampling call: ``config`` is applied when sampling and removed afterwards.
    """

    pipe: Any
    model: str
    config: XAttentionConfig | None = None


def _dtype(name: str) -> torch.dtype | None:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {DTYPES}")
    return None if name == "auto" else getattr(torch, name)


def _check_pipe(pipe: Any) -> XAttnPipe:
    if not isinstance(pipe, XAttnPipe):
        raise TypeError(f"pipe must be an {PIPE_TYPE} from 'XAttention Load Pipeline', got {type(pipe).__name__}")
    return pipe


def _check_sizes(num_frames: int, height: int, width: int, steps: int) -> None:
    from ..pipelines.hunyuan_video import check_video_size

    check_video_size(num_frames, height, width)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")


def _to_image(video: Any) -> torch.Tensor:
    """numpy/torch ``[F, H, W, 3]`` in 0..1 -> ComfyUI IMAGE (float32 torch, CPU, clamped)."""
    t = torch.as_tensor(video)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected a video [F, H, W, 3], got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).contiguous()


def _video_inputs() -> dict[str, Any]:
    return {
        "prompt": ("STRING", {"multiline": True, "default": "a red circle moving right",
                              "tooltip": "Text prompt. The proxy knows 'a {colour} {shape} moving {direction}'."}),
        "num_frames": ("INT", {"default": 9, "min": 1, "max": 257, "step": 4,
                               "tooltip": "Frames, 4k+1 (HunyuanVideo's VAE compresses time by 4). 129 at 720p."}),
        "height": ("INT", {"default": 32, "min": 16, "max": 2048, "step": 16,
                           "tooltip": "Multiple of 16 (the proxy's default: 32)."}),
        "width": ("INT", {"default": 32, "min": 16, "max": 2048, "step": 16,
                          "tooltip": "Multiple of 16 (the proxy's default: 32)."}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "control_after_generate": True,
                         "tooltip": "Noise seed."}),
    }


class XAttentionLoadPipeline:
    """Load the add-on's diffusers HunyuanVideo pipeline: a local diffusers folder, "proxy" or "tiny"."""

    DESCRIPTION = ("Loads a diffusers HunyuanVideo pipeline from a local folder (model_index.json plus "
                   "transformer, vae, text_encoder(_2), tokenizer(_2), scheduler), or 'proxy': the embedded small "
                   "HunyuanVideo transformer trained by xattn-video on procedural video (prompts like 'a red "
                   "circle moving right', 9 x 32 x 32, seconds on a CPU), or 'tiny': random weights, for tests. "
                   "Nothing is downloaded.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("STRING", {"default": "proxy", "tooltip": "'proxy' (embedded, trained on procedural "
                                                               "video), 'tiny' (random weights), or the path of "
                                                               "a local diffusers HunyuanVideo folder."}),
            "device": (list(DEVICES), {"default": "auto", "tooltip": "auto = cuda when available."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto = bfloat16 on cuda, float32 on cpu."}),
        }}

    RETURN_TYPES = (PIPE_TYPE,)
    RETURN_NAMES = ("pipe",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: str, device: str, dtype: str) -> tuple[XAttnPipe]:
        from ..pipelines.hunyuan_video import load_pipeline

        if device not in DEVICES:
            raise ValueError(f"device={device!r} is not one of {DEVICES}")
        name = model.strip() or "proxy"
        pipe = load_pipeline(name, device=None if device == "auto" else device, dtype=_dtype(dtype))
        return (XAttnPipe(pipe=pipe, model=name),)


class XAttentionConfigNode:
    """Build an ``XATTN_CONFIG`` (the add-on's ``XAttentionConfig``)."""

    DESCRIPTION = "XAttention settings for the pipeline nodes."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": _config_inputs(),
            "optional": {
                "dense_layers": _DENSE_LAYERS_INPUT,
                "mask_reuse_steps": _MASK_REUSE_INPUT,
                "precision": _PRECISION_INPUT,
                "residual_refresh": _RESIDUAL_INPUT,
                "backend": (list(BACKENDS), {"default": "auto", "tooltip": "auto = Triton kernels on CUDA, "
                                                                          "PyTorch's SDPA with a block mask "
                                                                          "elsewhere (reference for 8 bits)."}),
                "residual_precision": _RESIDUAL_PRECISION_INPUT,  # last: saved workflows list widgets by position
            },
        }

    RETURN_TYPES = (CONFIG_TYPE,)
    RETURN_NAMES = ("config",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, threshold: float, stride: int, block_size: int, warmup_steps: int, max_density: float,
              keep_text: bool, dense_layers: str = "", backend: str = "auto",
              mask_reuse_steps: int = 1, precision: str = "native",
              residual_refresh: int = -1, residual_precision: str = "native") -> tuple[XAttentionConfig]:
        return (make_config(threshold, stride, block_size, warmup_steps, max_density, keep_text,
                            dense_layers=parse_dense_layers(dense_layers), backend=backend,
                            mask_reuse_steps=int(mask_reuse_steps), precision=precision,
                            **residual_fields(residual_refresh, residual_precision)),)


class XAttentionApply:
    """Attach an XAttention config to a pipe: sampling with the result uses XAttention."""

    DESCRIPTION = ("Returns a pipe that samples with XAttention. The loaded pipeline itself is not changed, so "
                   "the original pipe link still samples dense.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "pipe": (PIPE_TYPE, {"tooltip": "From 'XAttention Load Pipeline'."}),
            "config": (CONFIG_TYPE, {"tooltip": "From 'XAttention Config'."}),
        }}

    RETURN_TYPES = (PIPE_TYPE,)
    RETURN_NAMES = ("pipe",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, pipe: XAttnPipe, config: XAttentionConfig) -> tuple[XAttnPipe]:
        pipe = _check_pipe(pipe)
        if not isinstance(config, XAttentionConfig):
            raise TypeError(f"config must be an {CONFIG_TYPE}, got {type(config).__name__}")
        return (XAttnPipe(pipe=pipe.pipe, model=pipe.model, config=config),)


class XAttentionSample:
    """Generate a video with the pipe (dense, or XAttention if the pipe went through 'XAttention Apply')."""

    DESCRIPTION = "Generates a video; returns its frames as an IMAGE batch [F, H, W, 3]."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pipe": (PIPE_TYPE, {"tooltip": "A loaded (and optionally XAttention-applied) pipe."}),
                             **_video_inputs()}}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The video frames, [F, H, W, 3] floats in 0..1.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, pipe: XAttnPipe, prompt: str, num_frames: int, height: int, width: int, steps: int,
               seed: int) -> tuple[torch.Tensor]:
        from ..pipelines.hunyuan_video import generate
        from ..processors import apply_xattention, remove_xattention

        pipe = _check_pipe(pipe)
        _check_sizes(num_frames, height, width, steps)
        kwargs = dict(num_frames=num_frames, height=height, width=width, num_inference_steps=steps, seed=seed)
        if pipe.config is None:
            return (_to_image(generate(pipe.pipe, prompt, **kwargs)),)
        apply_xattention(pipe.pipe, pipe.config)
        try:
            video = generate(pipe.pipe, prompt, **kwargs)
        finally:
            remove_xattention(pipe.pipe)  # the loaded pipeline is shared: leave it dense
        return (_to_image(video),)


def _fmt(x: Any, spec: str) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def report_summary(report: dict[str, Any]) -> str:
    """One readable paragraph from a ``compare`` report: speedup, density, PSNR/SSIM."""
    timing, density, fid = report.get("timing", {}), report.get("density", {}), report.get("fidelity", {})
    psnr = (fid.get("psnr") or {}).get("mean")
    ssim = (fid.get("ssim") or {}).get("mean")
    lines = [
        f"speedup (end to end): {_fmt(timing.get('speedup_end_to_end'), '.2f')}x",
        f"mean density after warmup: {_fmt(density.get('mean_sparse_steps'), '.3f')}",
        f"PSNR vs dense: {_fmt(psnr, '.2f')} dB, SSIM: {_fmt(ssim, '.4f')}",
        f"identical to dense: {report.get('identical')}",
    ]
    return "\n".join(lines)


class XAttentionCompare:
    """Generate dense and XAttention videos with the same seed; report speedup and fidelity."""

    DESCRIPTION = ("Runs the prompt twice (stock dense attention, then XAttention) with the same seed and shows "
                   "the end-to-end speedup, the mean block density and PSNR/SSIM of the sparse video against "
                   "the dense one.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"pipe": (PIPE_TYPE, {"tooltip": "A loaded pipe."}), **_video_inputs()},
            "optional": {
                "config": (CONFIG_TYPE, {"tooltip": "XAttention settings; if not connected, the config of an "
                                                    "applied pipe is used."}),
                "out_dir": ("STRING", {"default": "", "tooltip": "If set, write dense.mp4, sparse.mp4 and the "
                                                                 "report here (relative to ComfyUI's output folder)."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("dense_frames", "sparse_frames", "report_json")
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    def compare(self, pipe: XAttnPipe, prompt: str, num_frames: int, height: int, width: int, steps: int,
                seed: int, config: XAttentionConfig | None = None, out_dir: str = "") -> dict[str, Any]:
        from ..pipelines.hunyuan_video import compare

        pipe = _check_pipe(pipe)
        _check_sizes(num_frames, height, width, steps)
        config = config if config is not None else pipe.config
        if config is None:
            raise ValueError("no XAttention config: connect 'config', or pass a pipe from 'XAttention Apply'")
        result = compare(pipe.pipe, prompt, config, num_frames=num_frames, height=height, width=width,
                         num_inference_steps=steps, seed=seed, out_dir=_resolve_out_dir(out_dir))
        report_json = json.dumps(result.report, indent=1, default=str)
        summary = report_summary(result.report)
        logger.info("xattn_video compare:\n%s", summary)
        return {
            "ui": {"text": [summary], "xattn_report": [_ui_report(result.report)]},
            "result": (_to_image(result.dense_video), _to_image(result.sparse_video), report_json),
        }


def _ui_report(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers, for the node's UI/history entry (the full report is the STRING output)."""
    fid = report.get("fidelity", {})
    values = {
        "speedup_end_to_end": report.get("timing", {}).get("speedup_end_to_end"),
        "mean_density": report.get("density", {}).get("mean_sparse_steps"),
        "psnr": (fid.get("psnr") or {}).get("mean"),
        "ssim": (fid.get("ssim") or {}).get("mean"),
        "identical": report.get("identical"),
    }
    # the server sends this as strict JSON: no inf/nan (PSNR of identical videos is inf)
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _resolve_out_dir(out_dir: str) -> Path | None:
    """'' -> None; a relative path goes under ComfyUI's output folder (when running inside ComfyUI)."""
    out_dir = out_dir.strip()
    if not out_dir:
        return None
    p = Path(out_dir)
    if p.is_absolute():
        return p
    try:
        import folder_paths  # ComfyUI's; absent when the node is called outside ComfyUI
    except ImportError:
        return p
    return Path(folder_paths.get_output_directory()) / p


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "XAttentionHunyuanVideo": XAttentionHunyuanVideo,
    "XAttentionLoadPipeline": XAttentionLoadPipeline,
    "XAttentionConfig": XAttentionConfigNode,
    "XAttentionApply": XAttentionApply,
    "XAttentionSample": XAttentionSample,
    "XAttentionCompare": XAttentionCompare,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "XAttentionHunyuanVideo": "XAttention (HunyuanVideo / Wan)",
    "XAttentionLoadPipeline": "XAttention Load Pipeline",
    "XAttentionConfig": "XAttention Config",
    "XAttentionApply": "XAttention Apply",
    "XAttentionSample": "XAttention Sample",
    "XAttentionCompare": "XAttention Compare (dense vs sparse)",
}
