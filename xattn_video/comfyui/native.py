"""XAttention for ComfyUI's native HunyuanVideo model, through ``optimized_attention_override``.

ComfyUI's attention functions (``comfy/ldm/modules/attention.py``) are wrapped by ``wrap_attn``: when
``transformer_options`` holds ``"optimized_attention_override"``, every attention call becomes
``override(func, q, k, v, heads, skip_reshape=..., mask=..., transformer_options=..., ...)`` where ``func`` is the
attention function that would have run. HunyuanVideo (``comfy/ldm/hunyuan_video/model.py``) calls attention
from three places:

- the token refiner: text-only self-attention, ``q`` ``[B, H, L_txt, D]``, a square ``[B, 1, L, L]`` mask;
- every double block: ``cat(img, txt)`` joint attention, ``q`` ``[B, H, N_img + L_txt, D]``;
- every single block: the same joint layout.

The joint calls pass an additive key mask ``[1, 1, N]`` (0 for video and valid text, ``-finfo.max`` for
padded text) or None. Video tokens come first, so the number of video tokens is ``N - L_txt``; ``L_txt`` is
read from the diffusion model's ``context`` argument by a ``DIFFUSION_MODEL`` wrapper that also resets the
per-forward block counter (calls are numbered in order: double blocks, then single blocks, matching
``XAttentionConfig.dense_layers``). The denoising step is the position of ``transformer_options["sigmas"]``
in ``transformer_options["sample_sigmas"]``.

Nothing from ComfyUI is imported at module import time.

Example (inside ComfyUI)::

    patched, state = patch_model(model, XAttentionConfig(threshold=0.9, warmup_steps=5))
    # ... sample with `patched`; then state.density_per_step() -> {0: 1.0, ..., 5: 0.31, ...}
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..attention import log_once, xattention
from ..config import XAttentionConfig

logger = logging.getLogger("xattn_video")

PATCH_KEY = "xattn_video"  # key of our DIFFUSION_MODEL wrapper on the ModelPatcher
STATE_ATTR = "xattention_state"  # attribute of the patched ModelPatcher that holds the NativeXAttentionState
MIN_BLOCKS = 2  # sequences shorter than this many blocks stay on the original function
PAD_BIAS = -1.0e4  # additive mask values at or below this are treated as "key masked out"


@dataclass
class NativeXAttentionState:
    """What the patch saw: per denoising step, the density of every joint-attention call.

    ``densities[step]`` lists one value per joint-attention call of that step (1.0 for dense calls: warmup,
    ``dense_layers``, masks that are not key-padding masks). A step index lower than the previous one starts a
    new sampling run and clears the records (they describe the latest run). ``txt_len`` and ``layer`` are the
    per-forward context set by the diffusion-model wrapper.
    """

    config: XAttentionConfig
    densities: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    sparse_calls: int = 0
    dense_calls: int = 0
    fallback_calls: int = 0
    runs: int = 0
    last_step: int | None = None
    txt_len: int | None = None
    layer: int = 0

    def begin_forward(self, txt_len: int) -> None:
        self.txt_len, self.layer = txt_len, 0

    def end_forward(self) -> None:
        self.txt_len, self.layer = None, 0

    def observe_step(self, step: int | None) -> None:
        """Start a new run's records when the step index goes back (a new sampling run began)."""
        if step is None:
            return
        if self.last_step is None or step < self.last_step:
            self.densities.clear()
            self.sparse_calls = self.dense_calls = self.fallback_calls = 0
            self.runs += 1
        self.last_step = step

    def record(self, step: int | None, density: float, sparse: bool) -> None:
        self.densities[-1 if step is None else step].append(float(density))
        if sparse:
            self.sparse_calls += 1
        else:
            self.dense_calls += 1

    def density_per_step(self) -> dict[int, float]:
        """Mean density of each step's joint-attention calls (step -1: step unknown)."""
        return {s: sum(v) / len(v) for s, v in sorted(self.densities.items()) if v}

    def mean_sparse_density(self) -> float | None:
        """Mean density over the steps after warmup, or None if none ran."""
        vals = [d for s, d in self.density_per_step().items() if s >= self.config.warmup_steps]
        return sum(vals) / len(vals) if vals else None


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


def key_padding_lengths(mask: torch.Tensor | None, batch: int, n_keys: int) -> tuple[torch.Tensor | None, str | None]:
    """Turn a ComfyUI attention mask into ``kv_len`` ``[B]``: ``(kv_len, None)`` or ``(None, why not)``.

    Accepted: a key-padding mask (bool: True = attend; float: additive, 0 = attend, <= -1e4 = masked) whose
    non-key dimensions are all 1 (``[N]``, ``[1|B, N]``, ``[1|B, 1, N]``, ``[1|B, 1, 1, N]``) and whose valid
    keys form a prefix. ``mask=None`` gives ``(None, None)`` (every key valid).
    """
    if mask is None:
        return None, None
    if not isinstance(mask, torch.Tensor) or mask.dim() < 1 or mask.dim() > 4 or mask.shape[-1] != n_keys:
        return None, f"mask shape {tuple(getattr(mask, 'shape', ()))} is not a key mask over {n_keys} keys"
    m = mask.reshape(1, n_keys) if mask.dim() == 1 else mask
    if any(s != 1 for s in m.shape[1:-1]):
        return None, f"mask shape {tuple(mask.shape)} is not a key-padding mask (it varies over queries/heads)"
    m = m.reshape(m.shape[0], n_keys)
    if m.shape[0] not in (1, batch):
        return None, f"mask batch {m.shape[0]} does not match the attention batch {batch}"
    if m.dtype == torch.bool:
        valid = m
    else:
        valid = m == 0
        if not bool((valid | (m <= PAD_BIAS)).all()):
            return None, "mask holds additive biases other than 0 / -inf (not a key-padding mask)"
    lengths = valid.sum(-1)
    prefix = torch.arange(n_keys, device=m.device)[None, :] < lengths[:, None]
    if not bool((prefix == valid).all()):
        return None, "the valid keys of the mask are not a prefix of the sequence"
    if int(lengths.min()) < 1:
        return None, "the mask masks out every key"
    return lengths.to(torch.long).expand(batch).contiguous(), None


class XAttentionPatch:
    """The override (``__call__``) and diffusion-model wrapper of one patched model.

    ModelPatcher.clone() deep-copies ``model_options``; ``__deepcopy__`` returns ``self`` so every clone of the
    patched model keeps feeding the same state.
    """

    def __init__(self, config: XAttentionConfig) -> None:
        self.config = config
        self.state = NativeXAttentionState(config)

    def __deepcopy__(self, memo: dict[int, Any]) -> "XAttentionPatch":
        return self

    # -- DIFFUSION_MODEL wrapper -------------------------------------------------------------------------
    def diffusion_model_wrapper(self, executor: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Record the text length of this forward (``context`` + ByT5 tokens) and reset the block counter.

        HunyuanVideo.forward(x, timestep, context, y, txt_byt5, ...) is executed with positional arguments.
        """
        context = args[2] if len(args) > 2 else kwargs.get("context")
        txt_byt5 = args[4] if len(args) > 4 else kwargs.get("txt_byt5")
        txt_len = int(context.shape[1]) if isinstance(context, torch.Tensor) else None
        model = getattr(executor, "class_obj", None)
        if txt_len is not None and isinstance(txt_byt5, torch.Tensor) and getattr(model, "byt5_in", None) is not None:
            txt_len += int(txt_byt5.shape[1])
        if txt_len is None:
            log_once("xattn_video: HunyuanVideo forward without a `context` tensor; XAttention is off for it")
            return executor(*args, **kwargs)
        self.state.begin_forward(txt_len)
        try:
            return executor(*args, **kwargs)
        finally:
            self.state.end_forward()

    # -- optimized_attention_override ----------------------------------------------------------------------
    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run XAttention for HunyuanVideo's joint attention; every other call goes to ``func`` unchanged."""
        state, cfg = self.state, self.config
        names = ("q", "k", "v", "heads", "mask")
        got = dict(zip(names, args))
        for n in names:
            if n in kwargs and n not in got:
                got[n] = kwargs[n]
        q, k, v, heads = got.get("q"), got.get("k"), got.get("v"), got.get("heads")
        mask = got.get("mask")
        txt_len = state.txt_len
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

        layer = state.layer
        state.layer += 1
        to = kwargs.get("transformer_options") or {}
        step = step_index(to)
        state.observe_step(step)
        min_len = max(cfg.min_seq_len, MIN_BLOCKS * cfg.block_size)
        dense_reason = None
        if n < min_len:
            dense_reason = "short"
        elif layer in cfg.dense_layers:
            dense_reason = "dense_layer"
        elif cfg.warmup_steps > 0 and step is None:
            log_once("xattn_video: transformer_options has no sigmas/sample_sigmas, so the denoising step is "
                      "unknown; running dense attention (warmup cannot be counted)")
            dense_reason = "unknown_step"
        elif step is not None and step < cfg.warmup_steps:
            dense_reason = "warmup"
        kv_len = None
        if dense_reason is None:
            kv_len, why = key_padding_lengths(mask, b, n)
            if why is not None:
                log_once(f"xattn_video: {why}; running ComfyUI's attention for such calls")
                dense_reason = "mask"
                state.fallback_calls += 1
        if dense_reason is not None:
            state.record(step, 1.0, sparse=False)
            return func(*args, **kwargs)

        if not skip_reshape:
            q, k, v = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
        out, bmask = xattention(q, k, v, cfg, kv_len=kv_len, global_start=n - txt_len, layer=layer)
        state.record(step, bmask.density(), sparse=True)
        if kwargs.get("skip_output_reshape", False):
            return out
        return out.transpose(1, 2).reshape(b, n, h * d)


def is_hunyuan_video_model(model: Any) -> bool:
    """True when ``model`` is a ComfyUI ModelPatcher whose diffusion model is the native HunyuanVideo."""
    from comfy.ldm.hunyuan_video.model import HunyuanVideo  # ComfyUI only exists when running inside it

    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return isinstance(inner, HunyuanVideo)


def patch_model(model: Any, config: XAttentionConfig) -> tuple[Any, NativeXAttentionState]:
    """A clone of ComfyUI ``MODEL`` ``model`` whose HunyuanVideo joint attention runs XAttention.

    The input is never modified. The clone gets ``transformer_options["optimized_attention_override"]`` and a
    ``DIFFUSION_MODEL`` wrapper keyed ``"xattn_video"`` (replacing an earlier one), and its state as
    ``clone.xattention_state``.

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
    patch = XAttentionPatch(config)
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = patch
    wrapper_type = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    m.remove_wrappers_with_key(wrapper_type, PATCH_KEY)
    m.add_wrapper_with_key(wrapper_type, PATCH_KEY, patch.diffusion_model_wrapper)
    setattr(m, STATE_ATTR, patch.state)
    return m, patch.state
