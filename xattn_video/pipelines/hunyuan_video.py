"""HunyuanVideo with XAttention: load a pipeline, generate with timings, compare dense vs sparse.

Example::

    from xattn_video.config import load_config
    from xattn_video.pipelines.hunyuan_video import compare, load_pipeline
    pipe = load_pipeline()                       # the embedded tiny model; or load_pipeline("/models/hunyuan")
    result = compare(pipe, "a red fox in the snow", load_config("tiny_cpu"), out_dir="out/compare")
    print(result.report["timing"]["speedup_end_to_end"], result.report["fidelity"]["psnr"]["mean"])
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import XAttentionConfig
from ..hooks import AttentionClock, register_xattention_hook, timing_hooks, xattention_hook
from ..processors import _transformer_of, apply_xattention, block_attention_names, remove_xattention
from ..report.schema import CompareReport, DensityReport, RunTiming, TimingComparison
from ..runtime import RunRecord
from .tiny import TINY_DEFAULTS, tiny_call_kwargs, tiny_pipeline

REQUIRED_SUBFOLDERS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


EMBEDDED_PROXY = Path(__file__).resolve().parents[1] / "proxy" / "checkpoint"
HUNYUAN_DEFAULTS = {"num_frames": 129, "height": 720, "width": 1280, "num_inference_steps": 50}
BUILTIN_MODELS = ("proxy", "tiny")


def model_kind(model: str | Path | None) -> str:
    """``"proxy"`` (the embedded trained proxy, or a folder saved by ``xattn_video.proxy``), ``"tiny"`` (the
    random-weight test model) or ``"hunyuan"`` (a local diffusers HunyuanVideo folder)."""
    if model is None or str(model) in BUILTIN_MODELS:
        return "proxy" if model is None else str(model)
    from ..proxy.model import is_proxy_folder

    return "proxy" if is_proxy_folder(model) else "hunyuan"


def model_defaults(model: str | Path | None) -> tuple[str, dict[str, int]]:
    """(config preset, video size and steps) that suit ``model`` when the user names none."""
    kind = model_kind(model)
    if kind == "tiny":
        return "tiny_cpu", dict(TINY_DEFAULTS)
    if kind == "proxy":
        from ..proxy.model import read_info

        return "proxy_cpu", dict(read_info(EMBEDDED_PROXY if model in (None, "proxy") else model).defaults)
    return "hunyuan_720p_quality", dict(HUNYUAN_DEFAULTS)


def load_pipeline(model: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Any:
    """A HunyuanVideo pipeline. ``None`` or ``"proxy"``: the embedded proxy, a small HunyuanVideo transformer
    trained here on procedural video (its videos follow captions like "a red circle moving right"); ``"tiny"``:
    a random-weight model for tests; a folder: a proxy folder, or real weights in a local diffusers folder
    (``model_index.json`` plus the seven component subfolders). Nothing is downloaded. Float32 on a CPU,
    bfloat16 on a GPU, unless ``dtype`` says otherwise.

    Example::

        pipe = load_pipeline()                                # the embedded proxy
        pipe = load_pipeline("/models/HunyuanVideo", device="cuda")
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kind = model_kind(model)
    if kind == "tiny":
        return tiny_pipeline(seed=0, device=device, dtype=dtype)
    if kind == "proxy":
        from ..proxy.model import load_proxy

        return load_proxy(EMBEDDED_PROXY if model in (None, "proxy") else model, device=device, dtype=dtype)
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (give a local diffusers HunyuanVideo "
                                "folder, or omit --model for the embedded proxy model)")
    check_pipeline_class(path)
    missing = [p for p in ("model_index.json", *REQUIRED_SUBFOLDERS) if not (path / p).exists()]
    if missing:
        raise ValueError(f"model folder {str(path)!r} is incomplete: missing {', '.join(missing)} "
                         "(expected a diffusers HunyuanVideo folder)")
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    pipe.vae.enable_tiling()
    pipe.to(device)
    pipe.xattn_model_name = str(path)
    return pipe


# pipelines whose transformers XAttention supports (apply_xattention), but that load_pipeline does not run yet
PYTHON_API_ONLY = {"WanPipeline": "Wan 2.1 / 2.2", "WanImageToVideoPipeline": "Wan 2.1 / 2.2",
                   "HunyuanVideo15Pipeline": "HunyuanVideo 1.5", "HunyuanVideo15ImageToVideoPipeline": "HunyuanVideo 1.5"}


def check_pipeline_class(path: Path) -> None:
    """Raise ``ValueError`` when the folder's ``model_index.json`` names a pipeline other than
    ``HunyuanVideoPipeline`` (a folder without one is left to the completeness check)."""
    import json

    index = path / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        name = None
    if name is None or name == "HunyuanVideoPipeline":
        return
    if name in PYTHON_API_ONLY:
        raise ValueError(f"model folder {str(path)!r} holds a {name} ({PYTHON_API_ONLY[name]}): this loader (CLI, "
                         "ComfyUI pipeline nodes) runs HunyuanVideo folders only; load it with diffusers and call "
                         "xattn_video.apply_xattention(pipe, config) (see the README)")
    raise ValueError(f"model folder {str(path)!r} holds a {name}; accepted: a HunyuanVideoPipeline folder")


def check_video_size(num_frames: int, height: int, width: int,
                     names: tuple[str, str, str] = ("num_frames", "height", "width")) -> None:
    """Raise ``ValueError`` naming the bad value unless the size fits HunyuanVideo: the VAE packs 4 frames and
    8x8 pixels, the transformer patchifies by 2. ``names`` are how the caller's user spells the three."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"{names[0]}={num_frames} must be 4k+1 (1, 5, 9, ..., 129): the VAE packs 4 frames")
    for name, value in zip(names[1:], (height, width)):
        if value < 16 or value % 16:
            raise ValueError(f"{name}={value} must be a multiple of 16, at least 16 (VAE 8x, patch 2x)")


def model_name(pipe: Any) -> str:
    return getattr(pipe, "xattn_model_name", type(pipe).__name__)


def _call_kwargs(pipe: Any) -> dict:
    """What a built-in model needs in every call (its prompt template and text length)."""
    if getattr(pipe, "xattn_proxy_info", None) is not None:
        from ..proxy.model import proxy_call_kwargs

        return proxy_call_kwargs(pipe)
    return tiny_call_kwargs() if model_name(pipe) == "tiny" else {}


# -- timing ----------------------------------------------------------------------------------------------

class _Clock:
    """Wall time that waits for the GPU first, so host timestamps cover the device work."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@dataclass
class _RunTimer:
    """Per-step wall time (first transformer call of a step to the pipeline's step-end callback) and the time
    inside the block attention modules (``hooks.AttentionClock``)."""

    clock: _Clock
    attention: AttentionClock
    first_start: float | None = None
    step_start: float | None = None
    step_s: list[float] = field(default_factory=list)
    attention_s: list[float] = field(default_factory=list)
    denoise_end: float = 0.0

    def on_transformer_call(self, *_: Any, **__: Any) -> None:
        if self.step_start is None:
            self.step_start = self.clock.now()
            if self.first_start is None:
                self.first_start = self.step_start

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        now = self.clock.now()
        self.step_s.append(now - (self.step_start if self.step_start is not None else now))
        self.attention_s.append(self.attention.take())
        self.step_start = None
        self.denoise_end = now
        return callback_kwargs


@dataclass
class Generation:
    """A finished video and how long each part took."""

    video: np.ndarray  # [F, H, W, 3] float32 in 0..1
    total_s: float
    denoise_s: float
    decode_s: float
    step_s: list[float]
    attention_s: list[float]

    def run_timing(self) -> RunTiming:
        return RunTiming(self.total_s, self.denoise_s, self.decode_s, list(self.step_s), list(self.attention_s))

    def timing(self) -> dict[str, Any]:
        return self.run_timing().to_dict()


def timed_generate(pipe: Any, prompt: str, *, num_frames: int, height: int, width: int,
                   num_inference_steps: int, seed: int = 0, guidance_scale: float = 6.0,
                   progress: bool = True) -> Generation:
    """Generate one video and time each denoising step, the block attention modules and the VAE decode.

    The timers are diffusers hooks (``"xattn_video_timing"``) on the transformer and its block attention
    modules, removed afterwards; the attention processors are not touched."""
    model = _transformer_of(pipe)
    device = torch.device(pipe._execution_device if hasattr(pipe, "_execution_device") else default_device())
    clock = _Clock(device)
    timer = _RunTimer(clock, AttentionClock(clock.cuda))
    modules = [model.get_submodule(name) for name in block_attention_names(model)]
    remove_timing = timing_hooks(model, modules, timer.on_transformer_call, timer.attention)
    pipe.set_progress_bar_config(disable=not progress)
    try:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        t0 = timer.clock.now()
        out = pipe(prompt=prompt, num_frames=num_frames, height=height, width=width,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                   output_type="np", callback_on_step_end=timer.on_step_end, **_call_kwargs(pipe))
        t1 = timer.clock.now()
    finally:
        remove_timing()
    video = np.asarray(out.frames[0], dtype=np.float32)
    denoise_start = timer.first_start if timer.first_start is not None else timer.denoise_end
    return Generation(video=video, total_s=t1 - t0, denoise_s=timer.denoise_end - denoise_start,
                      decode_s=t1 - timer.denoise_end, step_s=timer.step_s, attention_s=timer.attention_s)


def generate(pipe: Any, prompt: str, *, num_frames: int, height: int, width: int, num_inference_steps: int,
             seed: int = 0, progress: bool = True) -> np.ndarray:
    """Generate one video with whatever attention the pipeline has: ``[F, H, W, 3]`` float32 in 0..1."""
    return timed_generate(pipe, prompt, num_frames=num_frames, height=height, width=width,
                          num_inference_steps=num_inference_steps, seed=seed, progress=progress).video


# -- dense vs sparse -------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """The two videos, the report (``report``: ``CompareReport.to_dict()``, as written to ``report.json``;
    ``typed``: the ``CompareReport``), the sparse run's ``RunRecord`` and the files written."""

    dense_video: np.ndarray
    sparse_video: np.ndarray
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    typed: CompareReport | None = None
    record: RunRecord | None = None


def compare(pipe: Any, prompt: str, config: XAttentionConfig, *, num_frames: int | None = None,
            height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
            seed: int = 0, out_dir: str | Path | None = None, lpips_weights: str | None = None,
            vbench_weights: str | None = None, progress: bool = True, warm_up: bool = True) -> Comparison:
    """Generate ``prompt`` twice with the same seed, stock dense attention then XAttention, and report the
    speedup (per step and end to end, attention vs the rest), the densities used and the fidelity of the
    sparse video to the dense one.

    With ``out_dir``: ``dense.mp4`` and ``sparse.mp4`` (written as soon as both runs finished, before any
    metric), then the report files. Needs the ``metrics`` extra; without it, a ``MissingExtraError`` says so
    before any work. ``warm_up`` first runs one untimed step of each (and one decode), so that one-off costs
    (kernel compilation, allocator growth, library autotuning) fall on neither timed run. An XAttention
    already applied to the pipeline is taken out for the runs and put back afterwards."""
    from ..extras import require

    require("ssim", *(("plots",) if out_dir is not None else ()), what="compare")
    from ..metrics.fidelity import fidelity_report
    from ..metrics.vbench import vbench_dimensions

    sizes = {"num_frames": num_frames, "height": height, "width": width, "num_inference_steps": num_inference_steps}
    defaults = _pipe_defaults(pipe)
    sizes = {k: (v if v is not None else defaults[k]) for k, v in sizes.items()}
    model = _transformer_of(pipe)
    applied = xattention_hook(model)
    remove_xattention(model)
    try:
        if warm_up:
            _warm_up(pipe, prompt, config, seed, sizes)
        dense = timed_generate(pipe, prompt, seed=seed, progress=progress, **sizes)
        runtime = apply_xattention(model, config)
        sparse = timed_generate(pipe, prompt, seed=seed, progress=progress, **sizes)
    finally:
        remove_xattention(model)
        if applied is not None:
            register_xattention_hook(model, applied)

    files: dict[str, Path] = {}
    if out_dir is not None:  # the finished videos first: a failing metric loses no generation
        from ..video_io import write_mp4

        out = Path(out_dir)
        files = {"dense_mp4": write_mp4(dense.video, out / "dense.mp4"),
                 "sparse_mp4": write_mp4(sparse.video, out / "sparse.mp4")}

    steps = sizes["num_inference_steps"]
    report = CompareReport(
        prompt=prompt, seed=seed, model=model_name(pipe), device=_device_name(pipe),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), **sizes,
        warmup_steps=config.warmup_steps, config=config.to_dict(),
        timing=TimingComparison.of(dense.run_timing(), sparse.run_timing(), config.warmup_steps),
        density=DensityReport.from_record(runtime.record, steps),
        fidelity=fidelity_report(dense.video, sparse.video, lpips_weights=lpips_weights),
        vbench={"dense": vbench_dimensions(dense.video, weights_dir=vbench_weights),
                "sparse": vbench_dimensions(sparse.video, weights_dir=vbench_weights)},
        identical=bool(np.array_equal(dense.video, sparse.video)),
    )
    result = Comparison(dense.video, sparse.video, report.to_dict(), files, typed=report, record=runtime.record)
    if out_dir is not None:
        from ..report.writer import write_report

        result.files.update(write_report(out_dir, report, dense.video, sparse.video))
    return result


def _pipe_defaults(pipe: Any) -> dict[str, int]:
    """The video size and steps a loaded pipeline is meant for."""
    info = getattr(pipe, "xattn_proxy_info", None)
    if info is not None:
        return dict(info.defaults)
    return dict(TINY_DEFAULTS) if model_name(pipe) == "tiny" else dict(HUNYUAN_DEFAULTS)


def _warm_up(pipe: Any, prompt: str, config: XAttentionConfig, seed: int, sizes: dict) -> None:
    """One dense step with decode, then one sparse step without, untimed."""
    model = _transformer_of(pipe)
    one_step = {**sizes, "num_inference_steps": 1}
    timed_generate(pipe, prompt, seed=seed, progress=False, **one_step)
    apply_xattention(model, config.replace(warmup_steps=0))
    try:
        pipe.set_progress_bar_config(disable=True)
        pipe(prompt=prompt, output_type="latent", generator=torch.Generator().manual_seed(seed), **one_step,
             **_call_kwargs(pipe))
    finally:
        remove_xattention(model)


def _device_name(pipe: Any) -> str:
    device = torch.device(getattr(pipe, "_execution_device", "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
