"""diffusers hooks of this package, registered by name in the transformer's ``HookRegistry``.

- ``"xattn_video"`` (``XAttentionHook``): installs the XAttention processors when registered and restores the
  previous ones when removed; before every transformer forward it tells the runtime the step: the pipeline's
  ``cache_context(..., step_index=i)`` where diffusers passes one, else the ``timestep`` argument (see
  ``runtime.steps``), and the video grid (latent shape over the patch sizes, for ``token_order="tile"``). ``reset_stateful_hooks()`` (which a diffusers pipeline calls when it finishes) ends the
  runtime's run: cached masks freed, step count forgotten; the record stays until the next run begins.
- ``"xattn_video_timing"`` (``timing_hooks``): per-step wall time and the time inside the block attention
  modules, for ``timed_generate`` / ``compare``.

Nothing but diffusers' registry is stored on the model.

Example::

    hook = attach_step_hook(pipe.transformer, runtime)     # steps only (processors set by hand)
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).remove_hook(HOOK_NAME)
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from .runtime import XAttentionRuntime

HOOK_NAME = "xattn_video"
TIMING_HOOK = "xattn_video_timing"


class _NoState:
    def reset(self) -> None:
        pass


class _ContextProbe(StateManager):
    """Receives the pipeline's cache context (diffusers sets it on the state managers of stateful hooks)."""

    def __init__(self) -> None:
        super().__init__(_NoState)
        self.current: Any = None

    def set_context(self, context: Any) -> None:
        super().set_context(context)
        self.current = context


class XAttentionHook(ModelHook):
    """Feeds the runtime one step observation per transformer forward; owns the processor swap.

    ``processors``: the processor dict to install while the hook is registered (None: leave the processors
    alone, the by-hand path).
    """

    _is_stateful = True

    def __init__(self, runtime: XAttentionRuntime, processors: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.processors = processors
        self.original: dict[str, Any] | None = None
        self.context = _ContextProbe()

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.processors is not None:
            self.original = dict(module.attn_processors)
            module.set_attn_processor(dict(self.processors))
        return module

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:  # diffusers' spelling
        if self.original is not None:
            # parallelism enabled while XAttention was in: the restored processors must know it too
            parallel = getattr(module, "_parallel_config", None)
            if getattr(parallel, "context_parallel_config", None) is not None:
                for proc in self.original.values():
                    if hasattr(proc, "_parallel_config"):
                        proc._parallel_config = parallel
            module.set_attn_processor(dict(self.original))
            self.original = None
        return module

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        context = self.context.current
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        latents = kwargs.get("hidden_states", args[0] if args else None)
        self.runtime.begin_forward(step=getattr(context, "step_index", None), timestep=timestep,
                                   num_steps=getattr(context, "num_inference_steps", None),
                                   grid=video_grid(module, latents))
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.runtime.end_forward()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers pipelines reset stateful hooks when a call ends: the run is over (its masks are freed),
        # its record stays readable until the next run begins
        self.runtime.end_run()
        return module


def video_grid(model: torch.nn.Module, latents: Any) -> tuple[int, int, int] | None:
    """The video tokens' ``(frames, height, width)`` of a transformer forward: the latents' ``[B, C, F, H, W]``
    over the patch sizes of the model's config (``patch_size_t`` and ``patch_size`` as in HunyuanVideo, or
    Wan's ``patch_size = (t, h, w)``); None when either is missing."""
    config = getattr(model, "config", None)
    p, pt = getattr(config, "patch_size", None), getattr(config, "patch_size_t", None)
    if isinstance(p, (tuple, list)) and len(p) == 3:
        pt, ph, pw = p
    else:
        ph = pw = p
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or not ph or not pw or not pt:
        return None
    f, h, w = latents.shape[2:]
    return (f // pt, h // ph, w // pw)


def registry_of(model: torch.nn.Module) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(model)


def xattention_hook(model: torch.nn.Module) -> XAttentionHook | None:
    """The ``"xattn_video"`` hook of ``model``, if one is registered."""
    hook = registry_of(model).get_hook(HOOK_NAME)
    return hook if isinstance(hook, XAttentionHook) else None


def register_xattention_hook(model: torch.nn.Module, hook: XAttentionHook) -> XAttentionHook:
    """Register ``hook`` as ``"xattn_video"``, replacing (and undoing) an earlier one."""
    registry = registry_of(model)
    if registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
    registry.register_hook(hook, HOOK_NAME)
    return hook


def attach_step_hook(transformer: torch.nn.Module, runtime: XAttentionRuntime) -> XAttentionHook:
    """Step tracking only, for processors set by hand (``xattention_processors``); undo with
    ``remove_xattention`` or ``registry.remove_hook("xattn_video")``.

    Example::

        runtime = XAttentionRuntime(config)
        transformer.set_attn_processor(xattention_processors(transformer, config, runtime))
        attach_step_hook(transformer, runtime)
    """
    return register_xattention_hook(transformer, XAttentionHook(runtime, processors=None))


# -- timing ----------------------------------------------------------------------------------------------

class _CallHook(ModelHook):
    """Calls ``before()`` ahead of the module's forward and ``after(token)`` once it returned."""

    def __init__(self, before: Callable[[], Any], after: Callable[[Any], None] | None = None) -> None:
        super().__init__()
        self.before, self.after = before, after
        self._tokens: list[Any] = []

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self._tokens.append(self.before())
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        token = self._tokens.pop()
        if self.after is not None:
            self.after(token)
        return output


class AttentionClock:
    """Time spent inside some modules, per step: CUDA events on a GPU (read at the step's end), perf counters
    on a CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        return start, end

    def stop(self, token: Any) -> None:
        if not self.cuda:
            self._seconds += time.perf_counter() - token
            return
        token[1].record()
        self._events.append(token)

    def take(self) -> float:
        """Seconds since the last ``take`` (synchronises on the recorded events)."""
        total = self._seconds + sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        self._seconds, self._events = 0.0, []
        return total


def timing_hooks(transformer: torch.nn.Module, modules: list[torch.nn.Module], on_forward: Callable[[], None],
                 clock: AttentionClock) -> Callable[[], None]:
    """Register ``"xattn_video_timing"``: ``on_forward()`` before every transformer forward and ``clock``
    around each of ``modules``. Returns the function that removes them all."""
    registry_of(transformer).register_hook(_CallHook(on_forward), TIMING_HOOK)
    for m in modules:
        registry_of(m).register_hook(_CallHook(clock.start, clock.stop), TIMING_HOOK)
    _invalidate(transformer)

    def remove() -> None:
        registry_of(transformer).remove_hook(TIMING_HOOK, recurse=True)
        _invalidate(transformer)

    return remove


def _invalidate(model: torch.nn.Module) -> None:
    # diffusers caches which child modules hold registries (for cache_context); adding or removing hooks on
    # children stales it (older diffusers have no such cache)
    invalidate = getattr(registry_of(model), "invalidate_child_registries_cache", None)
    if invalidate is not None:
        invalidate()
