"""Text-to-video with XAttention: load a pipeline (the embedded HunyuanVideo proxy and tiny models, or a local
diffusers HunyuanVideo, Wan 2.1 / 2.2 or HunyuanVideo 1.5 folder: ``folders``), generate with timings, compare
dense vs sparse.

Example::

    from xattn_video.config import load_config
    from xattn_video.pipelines.hunyuan_video import compare, load_pipeline
    pipe = load_pipeline()                       # the embedded proxy model; or load_pipeline("/models/Wan2.1")
    result = compare(pipe, "a red fox in the snow", load_config("tiny_cpu"), out_dir="out/compare")
    print(result.report["timing"]["speedup_end_to_end"], result.report["fidelity"]["psnr"]["mean"])
"""

from __future__ import annotations

import inspect
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import XAttentionConfig
from ..hooks import AttentionClock, register_xattention_hook, timing_hooks, xattention_hook
from ..processors import (_transformer_of, _transformers_of, apply_xattention, block_attention_names,
                          remove_xattention)
from ..report.schema import CompareReport, DensityReport, RunTiming, TimingComparison
from ..runtime import RunRecord
from .folders import FOLDER_KINDS, folder_kind, load_folder, video_size_multiples
from .tiny import TINY_DEFAULTS, tiny_call_kwargs, tiny_pipeline


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


EMBEDDED_PROXY = Path(__file__).resolve().parents[1] / "proxy" / "checkpoint"
BUILTIN_MODELS = ("proxy", "tiny")


def model_kind(model: str | Path | None) -> str:
    """``"proxy"`` (the embedded trained proxy, or a folder saved by ``xattn_video.proxy``), ``"tiny"`` (the
    random-weight test model) or ``"folder"`` (a local diffusers folder, see ``xattn_video.pipelines.folders``)."""
    if model is None or str(model) in BUILTIN_MODELS:
        return "proxy" if model is None else str(model)
    from ..proxy.model import is_proxy_folder

    return "proxy" if is_proxy_folder(model) else "folder"


def model_defaults(model: str | Path | None) -> tuple[str, dict[str, int]]:
    """(config preset, video size and steps) that suit ``model`` when the user names none. A diffusers folder is
    checked first (``folders.folder_kind``: a missing, incomplete or unaccepted folder raises).

    Example::

        model_defaults("/models/Wan2.1-T2V-14B-Diffusers")   # ('wan_720p', {'num_frames': 81, 'height': 720, ...})
    """
    kind = model_kind(model)
    if kind == "tiny":
        return "tiny_cpu", dict(TINY_DEFAULTS)
    if kind == "proxy":
        from ..proxy.model import read_info

        return "proxy_cpu", dict(read_info(EMBEDDED_PROXY if model in (None, "proxy") else model).defaults)
    folder = folder_kind(model)
    return folder.preset, dict(folder.defaults)


def load_pipeline(model: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Any:
    """A text-to-video pipeline. ``None`` or ``"proxy"``: the embedded proxy, a small HunyuanVideo transformer
    trained here on procedural video (its videos follow captions like "a red circle moving right"); ``"tiny"``:
    a random-weight HunyuanVideo model for tests; a folder: a proxy folder, or real weights in a local diffusers
    folder of a ``HunyuanVideoPipeline``, ``WanPipeline`` (Wan 2.1, 2.2) or ``HunyuanVideo15Pipeline``, the class
    read from its ``model_index.json`` (``xattn_video.pipelines.folders``). Nothing is downloaded. Float32 on a
    CPU, bfloat16 on a GPU, unless ``dtype`` says otherwise.

    Example::

        pipe = load_pipeline()                                # the embedded proxy
        pipe = load_pipeline("/models/Wan2.1-T2V-14B-Diffusers", device="cuda")     # a WanPipeline
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kind = model_kind(model)
    if kind == "tiny":
        return tiny_pipeline(seed=0, device=device, dtype=dtype)
    if kind == "proxy":
        from ..proxy.model import load_proxy

        return load_proxy(EMBEDDED_PROXY if model in (None, "proxy") else model, device=device, dtype=dtype)
    return load_folder(model, device=device, dtype=dtype)


def check_video_size(num_frames: int, height: int, width: int,
                     names: tuple[str, str, str] = ("num_frames", "height", "width"),
                     multiples: tuple[int, int] = (4, 16)) -> None:
    """Raise ``ValueError`` naming the bad value unless ``num_frames`` is ``t·k + 1`` and ``height`` and ``width``
    are multiples of ``s``, for ``multiples = (t, s)``: by default (4, 16), which fits every model the loader runs
    (the VAE packs 4 frames and 8x8 pixels, the transformer patchifies by 2; HunyuanVideo 1.5: 16x16 pixels,
    patch 1); a loaded pipeline's own with ``folders.video_size_multiples(pipe)``. ``names`` are how the caller's
    user spells the three.

    Example::

        check_video_size(6, 720, 1280, names=("--frames", "--height", "--width"))   # ValueError: --frames=6 ...
    """
    step, multiple = multiples
    if num_frames < 1 or (num_frames - 1) % step:
        raise ValueError(f"{names[0]}={num_frames} must be {step}k+1 "
                         f"({', '.join(str(step * k + 1) for k in range(3))}, ...): the VAE packs {step} frames")
    for name, value in zip(names[1:], (height, width)):
        if value < multiple or value % multiple:
            raise ValueError(f"{name}={value} must be a multiple of {multiple}, at least {multiple} "
                             "(the VAE's compression times the transformer's patch size)")


def model_name(pipe: Any) -> str:
    """How reports name the model: ``"proxy"``, ``"tiny"``, ``"<folder> (<pipeline class>)"`` for a folder."""
    return getattr(pipe, "xattn_model_name", type(pipe).__name__)


def call_arguments(pipe: Any, prompt: str, *, num_frames: int, height: int, width: int, num_inference_steps: int,
                   seed: int = 0, output_type: str = "np", guidance_scale: float | None = None) -> dict[str, Any]:
    """The keyword arguments of one ``pipe(...)`` call; every pipeline the loader runs takes the prompt, video
    size, steps, generator and output type. ``guidance_scale`` None keeps the pipeline's own default (Wan: 5.0
    with classifier-free guidance against the empty negative prompt; HunyuanVideo: 6.0, embedded); a
    ``HunyuanVideo15Pipeline`` takes none (its ``guider`` holds the guidance). The built-in models add their
    prompt template and text length.

    Raises:
        ValueError: a size the pipeline cannot make (``check_video_size`` with its ``video_size_multiples``), or
            a ``guidance_scale`` the pipeline does not take.

    Example::

        pipe(**call_arguments(pipe, "a red fox", num_frames=81, height=720, width=1280, num_inference_steps=50))
    """
    check_video_size(num_frames, height, width, multiples=video_size_multiples(pipe))
    kwargs: dict[str, Any] = dict(prompt=prompt, num_frames=num_frames, height=height, width=width,
                                  num_inference_steps=num_inference_steps, output_type=output_type,
                                  generator=torch.Generator(device="cpu").manual_seed(seed))
    if guidance_scale is not None:
        if "guidance_scale" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"{type(pipe).__name__} takes no guidance_scale (set its guider's instead)")
        kwargs["guidance_scale"] = guidance_scale
    if getattr(pipe, "xattn_proxy_info", None) is not None:
        from ..proxy.model import proxy_call_kwargs

        kwargs.update(proxy_call_kwargs(pipe))
    elif model_name(pipe) == "tiny":
        kwargs.update(tiny_call_kwargs())
    return kwargs


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
    """Per-step wall time (first transformer call of a step to the end of the scheduler's ``step``, which every
    pipeline calls once per denoising step) and the time inside the block attention modules
    (``hooks.AttentionClock``)."""

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

    def on_step_end(self) -> None:
        now = self.clock.now()
        self.step_s.append(now - (self.step_start if self.step_start is not None else now))
        self.attention_s.append(self.attention.take())
        self.step_start = None
        self.denoise_end = now

    def around_scheduler_step(self, scheduler: Any) -> Callable[[], None]:
        """Call ``on_step_end`` after each ``scheduler.step`` (``HunyuanVideo15Pipeline`` has no step-end
        callback); returns the function that takes the wrapper off."""
        original, own = scheduler.step, vars(scheduler).get("step")

        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.on_step_end()
            return out

        def remove() -> None:
            if own is None:
                del scheduler.step
            else:
                scheduler.step = own

        scheduler.step = step
        return remove


@dataclass
class Generation:
    """A finished video and how long each part took."""

    video: np.ndarray  # [F, H, W, 3] float32 in 0..1
    total_s: float
    denoise_s: float
    decode_s: float
    step_s: list[float]
    attention_s: list[float] | None  # None: not timed (compiled blocks)

    def run_timing(self) -> RunTiming:
        return RunTiming(self.total_s, self.denoise_s, self.decode_s, list(self.step_s),
                         None if self.attention_s is None else list(self.attention_s))

    def timing(self) -> dict[str, Any]:
        return self.run_timing().to_dict()


def timed_generate(pipe: Any, prompt: str, *, num_frames: int, height: int, width: int,
                   num_inference_steps: int, seed: int = 0, guidance_scale: float | None = None,
                   progress: bool = True) -> Generation:
    """Generate one video and time each denoising step, the block attention modules and the VAE decode.

    The call is ``call_arguments`` (``guidance_scale`` None: the pipeline's default). The timers are diffusers
    hooks (``"xattn_video_timing"``) on the transformers (Wan 2.2: both experts) and their block attention
    modules, and a wrapper around the scheduler's ``step``, all removed afterwards; the attention processors are
    not touched. Attention is not timed (``attention_s`` None) when a transformer has compiled modules: a hook
    around the attention module would break each compiled block's graph in two."""
    kwargs = call_arguments(pipe, prompt, num_frames=num_frames, height=height, width=width,
                            num_inference_steps=num_inference_steps, seed=seed, guidance_scale=guidance_scale)
    device = torch.device(pipe._execution_device if hasattr(pipe, "_execution_device") else default_device())
    clock = _Clock(device)
    timer = _RunTimer(clock, AttentionClock(clock.cuda))
    pipe.set_progress_bar_config(disable=not progress)
    removers = []
    try:
        removers.append(timer.around_scheduler_step(pipe.scheduler))
        models = [model for _, model in _transformers_of(pipe)]
        time_attention = not any(getattr(m, "_compiled_call_impl", None) is not None
                                 for model in models for m in model.modules())
        for model in models:
            modules = [model.get_submodule(name) for name in block_attention_names(model)] if time_attention else []
            removers.append(timing_hooks(model, modules, timer.on_transformer_call, timer.attention))
        t0 = timer.clock.now()
        out = pipe(**kwargs)
        t1 = timer.clock.now()
    finally:
        for remove in reversed(removers):
            remove()
    video = np.asarray(out.frames[0], dtype=np.float32)
    denoise_start = timer.first_start if timer.first_start is not None else timer.denoise_end
    return Generation(video=video, total_s=t1 - t0, denoise_s=timer.denoise_end - denoise_start,
                      decode_s=t1 - timer.denoise_end, step_s=timer.step_s,
                      attention_s=timer.attention_s if time_attention else None)


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
    applied = [(m, xattention_hook(m)) for _, m in _transformers_of(pipe)]
    remove_xattention(pipe)
    try:
        if warm_up:
            _warm_up(pipe, prompt, config, seed, sizes)
        dense = timed_generate(pipe, prompt, seed=seed, progress=progress, **sizes)
        runtime = apply_xattention(pipe, config)
        sparse = timed_generate(pipe, prompt, seed=seed, progress=progress, **sizes)
    finally:
        remove_xattention(pipe)
        for m, hook in applied:
            if hook is not None:
                register_xattention_hook(m, hook)

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
    if model_name(pipe) == "tiny":
        return dict(TINY_DEFAULTS)
    if type(pipe).__name__ not in FOLDER_KINDS:
        raise ValueError(f"no default video size for a {type(pipe).__name__}: give num_frames, height, width and "
                         "num_inference_steps")
    return dict(FOLDER_KINDS[type(pipe).__name__].defaults)


def _warm_up(pipe: Any, prompt: str, config: XAttentionConfig, seed: int, sizes: dict) -> None:
    """One dense step with decode, then one sparse step without, untimed."""
    one_step = {**sizes, "num_inference_steps": 1}
    timed_generate(pipe, prompt, seed=seed, progress=False, **one_step)
    apply_xattention(pipe, config.replace(warmup_steps=0, residual=False))  # the residual needs a warmup step
    try:
        pipe.set_progress_bar_config(disable=True)
        pipe(**call_arguments(pipe, prompt, seed=seed, output_type="latent", **one_step))
    finally:
        remove_xattention(pipe)


def _device_name(pipe: Any) -> str:
    device = torch.device(getattr(pipe, "_execution_device", "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"
