"""HunyuanVideo's context-parallel plan for diffusers (``ContextParallelConfig``, ``enable_parallelism``).

diffusers 0.42 ships context-parallel plans (``_cp_plan``) for Wan, Flux and others, none for HunyuanVideo.
``hunyuan_video_cp_plan()`` is one; ``enable_context_parallel`` applies it with the key-padding mask in the
token order the plan produces:

- the RoPE tables (the ``rope`` module's two outputs) and, at the first double-stream block, the video tokens
  (``hidden_states``) and the refined text tokens (``encoder_hidden_states``) are cut into N contiguous
  shards; rank r holds video shard r and text shard r, every head (the token refiner runs before, on the
  whole text, on every rank);
- ``proj_out``'s output (the video tokens) is gathered back, so every rank returns the whole latent;
- the model builds one key-padding mask ``[B, 1, 1, N_video + N_text]`` over the whole sequence (video, then
  text). A rank's attention sees its own tokens, video shard r then text shard r, and diffusers' Ulysses
  all-gathers a local mask in rank order, so the hook ``"xattn_video_cp_mask"`` on every block hands each
  block the mask of its own tokens in that order: after the all-gather, the key order is
  ``[v_0, t_0, v_1, t_1, ...]``, exactly the order of the keys diffusers' all-to-all produces.
- ``"xattn_video_cp"`` on the transformer checks, before any split, that the degree divides the heads and
  the video and text tokens (one-line errors naming them) and refuses ring attention.

With diffusers' own HunyuanVideo processor this is Ulysses attention (dispatch_attention_fn's all-to-all).
XAttention's processors (``processors.XAttentionProcessor``) read the same parallel config and do their own
exchange (``xattn_video.parallel``): whole sequence, single-GPU order, for their heads.

diffusers' ``enable_parallelism`` resolves the rank's device as ``rank % torch.accelerator.device_count()``,
which divides by zero on a machine without accelerator. There (the CPU tests, gloo) ``enable_context_parallel``
takes the same steps itself with diffusers' own pieces: the device mesh, ``ParallelConfig.setup``, the
processors' ``_parallel_config`` and ``apply_context_parallel`` with this plan.

Example (``torchrun --nproc-per-node 2``)::

    torch.distributed.init_process_group("nccl"); torch.cuda.set_device(rank)
    pipe = HunyuanVideoPipeline.from_pretrained(path, torch_dtype=torch.bfloat16).to("cuda")
    enable_context_parallel(pipe)                   # ulysses_degree = world size
    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.9))
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

from .parallel import check_context_parallel, check_divisible, context_parallel_config

MASK_HOOK = "xattn_video_cp_mask"
CHECK_HOOK = "xattn_video_cp"


def hunyuan_video_cp_plan() -> dict[str, Any]:
    """The ``cp_plan`` of ``HunyuanVideoTransformer3DModel`` (see the module docstring); give it to
    ``transformer.enable_parallelism(config=..., cp_plan=...)`` together with ``local_mask_hooks``, or use
    ``enable_context_parallel`` which does both."""
    return {
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def local_key_mask(mask: torch.Tensor, n_video: int, degree: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s part of a key mask over the whole sequence (``[..., n_video + n_text]``, video first):
    the keys of its video shard, then those of its text shard (``[..., (n_video + n_text) / degree]``)."""
    n_text = mask.shape[-1] - n_video
    video = mask[..., :n_video].chunk(degree, dim=-1)[rank]
    text = mask[..., n_video:].chunk(degree, dim=-1)[rank]
    return torch.cat((video, text), dim=-1)


class _LocalMaskHook(ModelHook):
    """Before a block's forward, replaces the whole sequence's key mask by this rank's (``local_key_mask``);
    the number of video tokens comes from the RoPE tables the block gets (this rank's shard of them). Every
    block of a forward gets the same mask object: it is cut once."""

    def __init__(self, degree: int, rank: int, memo: dict) -> None:
        super().__init__()
        self.degree, self.rank, self.memo = degree, rank, memo

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        processor = getattr(getattr(module, "attn", None), "processor", None)
        if getattr(processor, "_parallel_config", True) is None:
            raise RuntimeError(f"{type(processor).__name__} has no parallel config under context parallelism: it would "
                               "attend to this rank's shard only; install processors after enable_context_parallel "
                               "(apply_xattention reads the model's) or set their _parallel_config")
        args = list(args)
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[3] if len(args) > 3 else None)
        rope = kwargs["freqs_cis"] if "freqs_cis" in kwargs else (args[4] if len(args) > 4 else None)
        if mask is None or rope is None:
            return tuple(args), kwargs
        n_video = rope[0].shape[0] * self.degree
        if mask.shape[-1] < n_video:  # already this rank's mask
            return tuple(args), kwargs
        hit = self.memo.get("mask")
        if hit is not None and hit[0] is mask:
            local = hit[1]
        else:
            local = local_key_mask(mask, n_video, self.degree, self.rank)
            self.memo["mask"] = (mask, local)
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = local
        else:
            args[3] = local
        return tuple(args), kwargs


class _CheckHook(ModelHook):
    """Before every transformer forward: the degree must divide heads, video tokens and text tokens; the
    forward's end frees the memoised mask."""

    def __init__(self, degree: int, memo: dict) -> None:
        super().__init__()
        self.degree, self.memo = degree, memo

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        latents = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        config = module.config
        f, h, w = latents.shape[2:]
        n_video = (f // config.patch_size_t) * (h // config.patch_size) * (w // config.patch_size)
        check_divisible(heads=config.num_attention_heads, n_video=n_video, n_text=text.shape[1], degree=self.degree)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.memo.clear()
        return output


def _transformer(pipe_or_transformer: Any) -> torch.nn.Module:
    model = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if not (hasattr(model, "transformer_blocks") and hasattr(model, "single_transformer_blocks")):
        raise ValueError(f"{type(pipe_or_transformer).__name__} is not a HunyuanVideo pipeline or transformer")
    if getattr(model.config, "image_condition_type", None) == "token_replace":
        raise ValueError("context parallelism does not support image_condition_type='token_replace' (its first-frame "
                         "tokens would be those of every rank's shard); accepted: None or 'latent_concat'")
    return model


def enable_context_parallel(pipe_or_transformer: Any, config: Any = None) -> Any:
    """Ulysses context parallelism for a HunyuanVideo pipeline or transformer, with this plan.

    Args:
        config: a diffusers ``ContextParallelConfig`` (``ulysses_degree`` only; ring attention is refused),
            or None for ``ulysses_degree`` = the world size. ``torch.distributed`` must be initialised.

    Returns the diffusers ``ParallelConfig`` now on the transformer (``transformer._parallel_config``).

    Example::

        enable_context_parallel(pipe)                       # under torchrun --nproc-per-node 2
        apply_xattention(pipe, XAttentionConfig(threshold=0.9))
    """
    from diffusers import ContextParallelConfig, ParallelConfig

    model = _transformer(pipe_or_transformer)
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("context parallelism needs torch.distributed initialised (run under torchrun)")
    if config is None:
        config = ContextParallelConfig(ulysses_degree=torch.distributed.get_world_size())
    cp = context_parallel_config(config)
    if cp is None:
        raise ValueError(f"config must be a ContextParallelConfig or a ParallelConfig with one, got {config!r}")
    check_context_parallel(cp)
    heads = model.config.num_attention_heads
    if heads % cp.ulysses_degree:
        raise ValueError(f"ulysses_degree {cp.ulysses_degree} does not divide the model's {heads} attention heads")
    plan = hunyuan_video_cp_plan()
    if torch.accelerator.device_count() > 0:
        model.enable_parallelism(config=config, cp_plan=plan)
    else:
        _enable_without_accelerator(model, config, plan)
    cp = context_parallel_config(model._parallel_config)
    memo: dict = {}
    for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            _LocalMaskHook(cp.ulysses_degree, cp._ulysses_local_rank, memo), MASK_HOOK)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(_CheckHook(cp.ulysses_degree, memo), CHECK_HOOK)
    return model._parallel_config


def init_from_torchrun(device: str | None = None) -> tuple[int, int, str]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL with one GPU
    per process when CUDA is there (and ``device`` is not ``"cpu"``), else gloo on the CPU. Returns
    ``(rank, world_size, device)``; ``(0, 1, device)`` outside torchrun."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), world, device


def _enable_without_accelerator(model: torch.nn.Module, config: Any, plan: dict) -> None:
    """``enable_parallelism``'s steps on a CPU-only machine (see the module docstring)."""
    from diffusers import ContextParallelConfig, ParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel

    if model._parallel_config is not None:
        raise RuntimeError(f"parallelism is already applied to this {type(model).__name__}")
    if isinstance(config, ContextParallelConfig):
        config = ParallelConfig(context_parallel_config=config)
    cp = config.context_parallel_config
    mesh = cp.mesh or torch.distributed.device_mesh.init_device_mesh(
        "cpu", mesh_shape=cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config.setup(torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.device("cpu"), mesh=mesh)
    model._parallel_config = config
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(model, cp, plan)
