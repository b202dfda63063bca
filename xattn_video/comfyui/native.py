"""ComfyUI host adapter: XAttention for ComfyUI's native HunyuanVideo model, via ``optimized_attention_override``.

ComfyUI's attention functions (``comfy/ldm/modules/attention.py``) are wrapped by ``wrap_attn``: when
``transformer_options`` holds ``"optimized_attention_override"``, every attention call becomes
``override(func, q, k, v, heads, skip_reshape=..., mask=..., transformer_options=..., ...)`` where ``func`` is the
attention function that would have run. HunyuanVideo (``comfy/ldm/hunyuan_video/model.py``) calls attention
from three places:

- the token refiner: text-only self-attention, ``q`` ``[B, H, L_txt, D]``, a square ``[B, 1, L, L]`` mask;
- every double block: ``cat(img, txt)`` joint attention, ``q`` ``[B, H, N_img + L_txt, D]``;
- every single block: the same joint layout.

Like the diffusers processors, this adapter only supplies what the host knows: the step (the position of
``transformer_options["sigmas"]`` in ``"sample_sigmas"``, else the sigma itself), the layer index (joint
calls numbered in order per forward: double blocks, then single blocks, matching ``dense_layers``) and the
layout (``[B, H, N, D]``, video tokens first, so text starts at ``N - L_txt``). ``L_txt`` is read from the
diffusion model's ``context`` argument by a ``DIFFUSION_MODEL`` wrapper, which also reports each forward to
the runtime, with the video grid (``x``'s sides over ``patch_size``, for ``token_order="tile"``). The runtime
(``xattn_video.runtime``) decides dense or sparse; dense calls run ComfyUI's own attention function.

Nothing from ComfyUI is imported at module import time.

Example (inside ComfyUI)::

    patched, runtime = patch_model(model, XAttentionConfig(threshold=0.9, warmup_steps=5))
    # ... sample with `patched`; then runtime.record.density_table() -> {0: {0: 1.0, ...}, ..., 5: {0: 0.31, ...}}
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import XAttentionConfig
from ..log import log_once
from ..runtime import MaskSource, XAttentionRuntime
from ..runtime.padding import key_padding_lengths  # noqa: F401  (the one parser; older imports name it here)

PATCH_KEY = "xattn_video"  # key of our DIFFUSION_MODEL wrapper on the ModelPatcher
STATE_ATTR = "xattention_runtime"  # attribute of the patched ModelPatcher that holds the XAttentionRuntime
TRANSFORMER_OPTIONS_ARG = 11  # position of transformer_options in HunyuanVideo.forward's arguments


def step_index(transformer_options: dict[str, Any]) -> int | None:
    """0-based denoising step of this call: where ``sigmas[0]`` falls in ``sample_sigmas`` (None if unknown).

    Second-order samplers evaluate the model between two schedule sigmas; such a call belongs to the step
    that started at the larger sigma.
    """
    sigmas = transformer_options.get("sigmas")
    schedule = transformer_options.get("sample_sigmas")
    if sigmas is None or schedule is None:
        return None
    sigma = float(torch.as_tensor(sigmas).reshape(-1)[0])
    sched = torch.as_tensor(schedule, dtype=torch.float64).reshape(-1).cpu()
    tol = 1e-4 * abs(sigma) + 1e-7
    at_or_above = int((sched >= sigma - tol).sum())
    return max(0, at_or_above - 1)


def current_sigma(transformer_options: dict[str, Any]) -> float | None:
    """The sigma of this call (``sigmas[0]``), or None."""
    sigmas = transformer_options.get("sigmas")
    return None if sigmas is None else float(torch.as_tensor(sigmas).reshape(-1)[0])


class XAttentionPatch:
    """The override (``__call__``) and diffusion-model wrapper of one patched model.

    ModelPatcher.clone() deep-copies ``model_options``; ``__deepcopy__`` returns ``self`` so every clone of the
    patched model keeps feeding the same runtime.
    """

    def __init__(self, config: XAttentionConfig, mask_source: MaskSource | None = None) -> None:
        self.config = config
        self.runtime = XAttentionRuntime(config, mask_source=mask_source)
        self.txt_len: int | None = None  # per forward: text tokens after the video tokens
        self.layer = 0  # per forward: joint-attention calls seen so far

    def __deepcopy__(self, memo: dict[int, Any]) -> "XAttentionPatch":
        return self

    # -- DIFFUSION_MODEL wrapper -------------------------------------------------------------------------
    def diffusion_model_wrapper(self, executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Report the forward's step to the runtime, record its text length (``context`` + ByT5 tokens) and
        restart the layer count.

        HunyuanVideo.forward(x, timestep, context, y, txt_byt5, ..., transformer_options) is executed with
        positional arguments.
        """
        context = args[2] if len(args) > 2 else kwargs.get("context")
        txt_byt5 = args[4] if len(args) > 4 else kwargs.get("txt_byt5")
        options = args[TRANSFORMER_OPTIONS_ARG] if len(args) > TRANSFORMER_OPTIONS_ARG else kwargs.get(
            "transformer_options")
        txt_len = int(context.shape[1]) if isinstance(context, torch.Tensor) else None
        model = getattr(executor, "class_obj", None)
        if txt_len is not None and isinstance(txt_byt5, torch.Tensor) and getattr(model, "byt5_in", None) is not None:
            txt_len += int(txt_byt5.shape[1])
        if txt_len is None:
            log_once("xattn_video: HunyuanVideo forward without a `context` tensor; XAttention is off for it")
            return executor(*args, **kwargs)
        options = options if isinstance(options, dict) else {}
        schedule = options.get("sample_sigmas")
        self.runtime.begin_forward(step=step_index(options), timestep=current_sigma(options),
                                   num_steps=len(schedule) - 1 if schedule is not None else None,
                                   grid=video_grid(model, args, kwargs))
        self.txt_len, self.layer = txt_len, 0
        try:
            return executor(*args, **kwargs)
        finally:
            self.txt_len, self.layer = None, 0
            self.runtime.end_forward()

    # -- optimized_attention_override ----------------------------------------------------------------------
    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """HunyuanVideo's joint attention goes to the runtime; every other call to ``func`` unchanged."""
        names = ("q", "k", "v", "heads", "mask")
        got = dict(zip(names, args))
        for n in names:
            if n in kwargs and n not in got:
                got[n] = kwargs[n]
        q, k, v, heads = got.get("q"), got.get("k"), got.get("v"), got.get("heads")
        txt_len = self.txt_len
        if txt_len is None or not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or heads is None:
            return func(*args, **kwargs)  # outside a HunyuanVideo forward (or an unknown call form)

        skip_reshape = bool(kwargs.get("skip_reshape", False))
        if skip_reshape:
            b, h, n, d = q.shape
            n_k = k.shape[2]
        else:
            b, n, hd = q.shape
            h, d, n_k = int(heads), hd // int(heads), k.shape[1]
        if n_k != n or n <= txt_len:
            return func(*args, **kwargs)  # token refiner (text only) or cross-attention: not ours

        layer = self.layer
        self.layer += 1
        if not skip_reshape:  # views: [B, N, H*D] -> [B, H, N, D]
            q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))

        def comfy_attention() -> torch.Tensor:  # ComfyUI's own function, output as [B, H, N, D]
            return func(*args, **{**kwargs, "skip_output_reshape": True})

        out = self.runtime.attend(q, k, v, layer=layer, mask=got.get("mask"), global_start=n - txt_len,
                                  host_attention=comfy_attention)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(b, n, h * d)


def video_grid(model: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int] | None:
    """The video tokens' ``(frames, height, width)`` of a HunyuanVideo forward, as ComfyUI's ``img_ids``
    counts them (latent sides over ``patch_size``, rounded); None when unknown or when reference-latent tokens
    come before the video (then ``token_order="tile"`` refuses the call)."""
    x = args[0] if args else kwargs.get("x")
    ref_latent = args[8] if len(args) > 8 else kwargs.get("ref_latent")
    patch = getattr(model, "patch_size", None)
    if not isinstance(x, torch.Tensor) or ref_latent is not None or not patch:
        return None
    sides, patch = list(x.shape[2:]), list(patch)
    if len(sides) == 2 and len(patch) == 2:  # an image model: one frame
        sides, patch = [1, *sides], [1, *patch]
    if len(sides) != 3 or len(patch) != 3:
        return None
    t, h, w = ((s + p // 2) // p for s, p in zip(sides, patch))
    return (t, h, w)


def is_hunyuan_video_model(model: Any) -> bool:
    """True when ``model`` is a ComfyUI ModelPatcher whose diffusion model is the native HunyuanVideo."""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo  # ComfyUI only exists when running inside it

    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return isinstance(inner, HunyuanVideo)


def patch_model(model: Any, config: XAttentionConfig, *,
                mask_source: MaskSource | None = None) -> tuple[Any, XAttentionRuntime]:
    """A clone of ComfyUI ``MODEL`` ``model`` whose HunyuanVideo joint attention runs XAttention.

    The input is never modified. The clone gets ``transformer_options["optimized_attention_override"]`` and a
    ``DIFFUSION_MODEL`` wrapper keyed ``"xattn_video"`` (replacing an earlier one), and its runtime as
    ``clone.xattention_runtime``. ``mask_source``: see ``XAttentionRuntime``.

    Raises:
        TypeError: ``model`` is not a ModelPatcher, or its diffusion model is not ComfyUI's HunyuanVideo.
    """
    import comfy.patcher_extension

    if not hasattr(model, "clone") or not hasattr(model, "model_options"):
        raise TypeError(f"model must be a ComfyUI MODEL (ModelPatcher), got {type(model).__name__}")
    if not is_hunyuan_video_model(model):
        inner = getattr(getattr(model, "model", None), "diffusion_model", None)
        raise TypeError(
            f"XAttention (HunyuanVideo) needs a HunyuanVideo model; this MODEL's diffusion model is "
            f"{type(inner).__name__} ({type(getattr(model, 'model', None)).__name__})"
        )
    patch = XAttentionPatch(config, mask_source=mask_source)
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = patch
    wrapper_type = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    m.remove_wrappers_with_key(wrapper_type, PATCH_KEY)
    m.add_wrapper_with_key(wrapper_type, PATCH_KEY, patch.diffusion_model_wrapper)
    setattr(m, STATE_ATTR, patch.runtime)
    return m, patch.runtime
