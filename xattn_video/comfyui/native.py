"""ComfyUI host adapter: XAttention for ComfyUI's native HunyuanVideo and Wan models, via
``optimized_attention_override``.

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

Wan (``comfy/ldm/wan/model.py``, ``WanXAttentionPatch``): each block's self-attention over the video tokens
goes to the runtime (one layer per block, no text in it); the cross-attention to the text and CLIP image tokens
stays on ComfyUI's attention. HunyuanVideo 1.5 is not in the ComfyUI this project vendors (0.3.64); ComfyUI
added it later (Comfy-Org/ComfyUI pull request 10819), untested here.

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
WAN_TRANSFORMER_OPTIONS_ARG = 5  # ... and in WanModel.forward's


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
        if not self._inside_forward() or not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or heads is None:
            return func(*args, **kwargs)  # outside a forward of the model (or an unknown call form)

        skip_reshape = bool(kwargs.get("skip_reshape", False))
        if skip_reshape:
            b, h, n, d = q.shape
            n_k = k.shape[2]
        else:
            b, n, hd = q.shape
            h, d, n_k = int(heads), hd // int(heads), k.shape[1]
        ours, global_start = self._select(n, n_k)
        if not ours:
            return func(*args, **kwargs)

        layer = self.layer
        self.layer += 1
        if not skip_reshape:  # views: [B, N, H*D] -> [B, H, N, D]
            q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))

        def comfy_attention() -> torch.Tensor:  # ComfyUI's own function, output as [B, H, N, D]
            return func(*args, **{**kwargs, "skip_output_reshape": True})

        out = self.runtime.attend(q, k, v, layer=layer, mask=got.get("mask"), global_start=global_start,
                                  host_attention=comfy_attention)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(b, n, h * d)

    def _inside_forward(self) -> bool:
        return self.txt_len is not None

    def _select(self, n: int, n_k: int) -> tuple[bool, int | None]:
        """Whether a call of ``n`` queries over ``n_k`` keys is ours, and where its text starts: HunyuanVideo's
        joint attention (video then text), not the token refiner's text-only attention."""
        assert self.txt_len is not None
        return n_k == n and n > self.txt_len, n - self.txt_len


class WanXAttentionPatch(XAttentionPatch):
    """The override and wrapper for ComfyUI's native Wan (2.1 / 2.2; ``comfy.ldm.wan.model.WanModel`` and its
    subclasses).

    A Wan block calls attention two or three times: self-attention over the video tokens (``q``, ``k``, ``v``
    ``[B, N, H*D]``, no mask), then cross-attention to the text (``k`` of the context's length) and, in I2V, to
    the CLIP image tokens. Only the self-attention is ours (layers numbered in call order: one per block, VACE
    blocks included); text never enters it (``global_start=None``). A call is self-attention when its keys are
    as many as its queries; where that count equals a cross-attention's key count the call cannot be told apart:
    it stays on ComfyUI's attention (logged once).
    """

    def __init__(self, config: XAttentionConfig, mask_source: MaskSource | None = None) -> None:
        super().__init__(config, mask_source=mask_source)
        self.cross_lengths: tuple[int, ...] | None = None  # per forward: key counts of the cross-attention calls

    def diffusion_model_wrapper(self, executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Report the forward's step and grid to the runtime, record the cross-attention lengths.

        WanModel.forward(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs) is executed
        with positional arguments."""
        context = args[2] if len(args) > 2 else kwargs.get("context")
        clip_fea = args[3] if len(args) > 3 else kwargs.get("clip_fea")
        options = args[WAN_TRANSFORMER_OPTIONS_ARG] if len(args) > WAN_TRANSFORMER_OPTIONS_ARG else kwargs.get(
            "transformer_options")
        if not isinstance(context, torch.Tensor):
            log_once("xattn_video: Wan forward without a `context` tensor; XAttention is off for it")
            return executor(*args, **kwargs)
        model = getattr(executor, "class_obj", None)
        lengths = {int(context.shape[1])}
        if isinstance(clip_fea, torch.Tensor):
            lengths |= {int(clip_fea.shape[-2]), int(clip_fea.shape[-2]) + int(context.shape[1])}
        options = options if isinstance(options, dict) else {}
        schedule = options.get("sample_sigmas")
        self.runtime.begin_forward(step=step_index(options), timestep=current_sigma(options),
                                   num_steps=len(schedule) - 1 if schedule is not None else None,
                                   grid=wan_video_grid(model, args, kwargs))
        self.cross_lengths, self.layer = tuple(sorted(lengths)), 0
        try:
            return executor(*args, **kwargs)
        finally:
            self.cross_lengths, self.layer = None, 0
            self.runtime.end_forward()

    def _inside_forward(self) -> bool:
        return self.cross_lengths is not None

    def _select(self, n: int, n_k: int) -> tuple[bool, int | None]:
        assert self.cross_lengths is not None
        if n_k != n:
            return False, None  # cross-attention
        if n in self.cross_lengths:
            log_once(f"xattn_video: a Wan attention call of {n} queries and keys cannot be told from cross-attention "
                     f"(text / image key counts {list(self.cross_lengths)}); it stays on ComfyUI's attention")
            return False, None
        return True, None


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


def wan_video_grid(model: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[int, int, int] | None:
    """The video tokens' ``(frames, height, width)`` of a Wan forward: ``x`` (and ``time_dim_concat``) padded to
    the patch size, over it; None when unknown or with a reference latent (its tokens come first)."""
    x = args[0] if args else kwargs.get("x")
    concat = args[4] if len(args) > 4 else kwargs.get("time_dim_concat")
    patch = getattr(model, "patch_size", None)
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or not patch or len(patch) != 3 \
            or "reference_latent" in kwargs:
        return None
    frames = x.shape[2] + (concat.shape[2] if isinstance(concat, torch.Tensor) else 0)
    t, h, w = (-(-s // p) for s, p in zip((frames, x.shape[3], x.shape[4]), patch))
    return (t, h, w)


def is_wan_model(model: Any) -> bool:
    """True when ``model`` is a ComfyUI ModelPatcher whose diffusion model is the native Wan (2.1 / 2.2)."""
    from comfy.ldm.wan.model import WanModel

    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return isinstance(inner, WanModel)


def is_hunyuan_video_model(model: Any) -> bool:
    """True when ``model`` is a ComfyUI ModelPatcher whose diffusion model is the native HunyuanVideo."""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo  # ComfyUI only exists when running inside it

    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return isinstance(inner, HunyuanVideo)


def patch_model(model: Any, config: XAttentionConfig, *,
                mask_source: MaskSource | None = None) -> tuple[Any, XAttentionRuntime]:
    """A clone of ComfyUI ``MODEL`` ``model`` whose attention runs XAttention: HunyuanVideo's joint video+text
    attention, or Wan's self-attention over the video tokens (its cross-attention stays on ComfyUI's).

    The input is never modified. The clone gets ``transformer_options["optimized_attention_override"]`` and a
    ``DIFFUSION_MODEL`` wrapper keyed ``"xattn_video"`` (replacing an earlier one), and its runtime as
    ``clone.xattention_runtime``. ``mask_source``: see ``XAttentionRuntime``.

    Raises:
        TypeError: ``model`` is not a ModelPatcher, or its diffusion model is neither ComfyUI's HunyuanVideo
            nor its Wan.
    """
    import comfy.patcher_extension

    if not hasattr(model, "clone") or not hasattr(model, "model_options"):
        raise TypeError(f"model must be a ComfyUI MODEL (ModelPatcher), got {type(model).__name__}")
    if is_hunyuan_video_model(model):
        patch = XAttentionPatch(config, mask_source=mask_source)
    elif is_wan_model(model):
        patch = WanXAttentionPatch(config, mask_source=mask_source)
    else:
        inner = getattr(getattr(model, "model", None), "diffusion_model", None)
        raise TypeError(
            f"XAttention needs a HunyuanVideo or Wan model (comfy.ldm.hunyuan_video.model.HunyuanVideo, "
            f"comfy.ldm.wan.model.WanModel); this MODEL's diffusion model is "
            f"{type(inner).__name__} ({type(getattr(model, 'model', None)).__name__})"
        )
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = patch
    wrapper_type = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    m.remove_wrappers_with_key(wrapper_type, PATCH_KEY)
    m.add_wrapper_with_key(wrapper_type, PATCH_KEY, patch.diffusion_model_wrapper)
    setattr(m, STATE_ATTR, patch.runtime)
    return m, patch.runtime
