"""One rank of the 2-process (gloo) context-parallel checks of tests/test_parallel.py; each rank saves what it
saw to ``out_dir/rank{r}.pt`` and the test compares. Run by ``torch.multiprocessing.spawn``.

Everything is computed first in one process (each rank does it alike: same seeds), then under context
parallelism, on the tiny random-weight transformer of tests/test_processors.py.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

# 3 x 6 x 6 = 108 video tokens + 10 text tokens (sample 1: 3 valid) = 118: 8 blocks of 16
CONFIG = dict(block_size=16, stride=4, warmup_steps=1, mask_reuse_steps=2, dense_above=0.75, backend="reference",
              # layer 2: head 0 exact, head 1 not; the plan must see both heads on both ranks
              threshold={"default": 0.5, "heads": {1: [0.3, 0.95], 2: [1.0, 0.4]}})
TIMESTEPS = (900.0, 800.0, 700.0)  # step 0 warmup, 1 estimated, 2 reused


def _errors(fn) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        return f"{type(e).__name__}: {e}"
    return "no error"


def _run(model, x):
    """The outputs of the forwards of three steps."""
    outs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            x = dict(x, timestep=torch.full((x["hidden_states"].shape[0],), t))
            outs.append(model(**x)[0])
    return outs


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _checks(rank, world)
        result["cli_rc"] = _cli(rank, world, out_dir)
        _bench(out_dir)  # last: the benchmark leaves the process group when it ends
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def _bench(out_dir: str) -> None:
    """``benchmarks/bench_parallel.py --tiny`` (its CPU smoke mode) in these two processes, as torchrun runs it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_parallel

    argv, sys.argv = sys.argv, ["bench_parallel.py", "--tiny", "--out", os.path.join(out_dir, "bench.json")]
    try:
        bench_parallel.main()
    finally:
        sys.argv = argv


def _cli(rank: int, world: int, out_dir: str) -> int:
    """``xattn-video generate`` on the tiny model: rank 0 alone as one process into ``single/``, then both
    ranks as torchrun would start them into ``cp/`` (rank 0 writes)."""
    from xattn_video.cli import main

    args = ["generate", "--prompt", "a red fox", "--model", "tiny", "--frames", "9", "--height", "96", "--width",
            "128", "--steps", "3", "--warmup", "1", "--device", "cpu"]
    if rank == 0:
        assert main(args + ["--out", os.path.join(out_dir, "single")]) == 0
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    return main(args + ["--out", os.path.join(out_dir, "cp")])


def _checks(rank: int, world: int) -> dict:
    from diffusers import ContextParallelConfig

    from test_processors import inputs, tiny_transformer
    from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
    from xattn_video.context_parallel import enable_context_parallel
    from xattn_video.parallel import (UlyssesGroup, gather_heads_reference, scatter_heads_reference,
                                      shard_tokens_reference)
    from xattn_video.processors import XAttentionProcessor
    from xattn_video.runtime import runtime as runtime_module

    res: dict = {}
    masks: list = []
    estimate = runtime_module.xattention_mask

    def recording(*args, **kwargs):
        m = estimate(*args, **kwargs)
        masks.append(m.to_dense())
        return m

    runtime_module.xattention_mask = recording
    cfg = XAttentionConfig(**CONFIG)
    x = inputs(valid=(10, 3))  # sample 1: 3 of 10 text keys valid, so rank 0 holds padded keys too

    # -- one process -------------------------------------------------------------------------------------
    model = tiny_transformer()
    with torch.no_grad():
        res["single_stock"] = model(**x)[0]
    rt = apply_xattention(model, cfg)
    res["single_out"] = _run(model, x)
    res["single_record"] = [c.key() for c in rt.record.calls]
    res["single_masks"], masks[:] = list(masks), []
    remove_xattention(model)

    # -- context parallelism: the exchange against its twins, stock processors, XAttention applied after ----
    enable_context_parallel(model)
    group = UlyssesGroup.from_parallel_config(model._parallel_config)
    g = torch.Generator().manual_seed(5)
    full = torch.randn(3, 2, 118, 4, 8, generator=g)  # q, k, v of the whole sequence, 4 heads
    local = [shard_tokens_reference(t, 108, rank, world) for t in full]
    got = group.scatter_heads(*local, n_video=54)
    res["scatter_ok"] = all(torch.equal(a, scatter_heads_reference(t, rank, world)) for a, t in zip(got, full))
    outs = [scatter_heads_reference(full[0], r, world) for r in range(world)]
    res["gather_ok"] = torch.equal(group.gather_heads(outs[rank], 54), gather_heads_reference(outs, 108, rank))
    key_mask = torch.arange(118)[None, None, None, :] < torch.tensor([118, 112])[:, None, None, None]
    res["mask_ok"] = torch.equal(group.gather_key_mask(shard_tokens_reference(key_mask, 108, rank, world, dim=-1),
                                                       54, 118), key_mask)

    with torch.no_grad():
        res["cp_stock"] = model(**x)[0]
    rt = apply_xattention(model, cfg)
    res["cp_out"] = _run(model, x)
    res["cp_record"] = [c.key() for c in rt.record.calls]
    res["cp_masks"], masks[:] = list(masks), []

    # a processor installed by hand without the parallel config would attend to its shard: refused
    remove_xattention(model)
    model.set_attn_processor(XAttentionProcessor(cfg))
    res["err_no_config"] = _errors(lambda: model(**x))
    # indivisible token counts, checked before diffusers cuts anything
    res["err_text"] = _errors(lambda: model(**inputs(text=9, valid=(9, 6))))
    res["err_video"] = _errors(lambda: model(**inputs(hw=10)))

    # -- XAttention applied before enabling context parallelism: the processors learn it from diffusers -------
    second = tiny_transformer()
    rt = apply_xattention(second, cfg)
    enable_context_parallel(second)
    res["cp_first_out"] = _run(second, x)
    res["cp_first_record"] = [c.key() for c in rt.record.calls]
    masks[:] = []

    # -- the residual (measured at the warmup step, added back after): one process, then under Ulysses ---------
    with_residual = cfg.replace(mask_reuse_steps=1, residual=True)
    for key, parallel in (("res_single", False), ("res_cp", True)):
        third = tiny_transformer()
        if parallel:
            enable_context_parallel(third)
        rt = apply_xattention(third, with_residual)
        res[f"{key}_out"] = _run(third, x)
        res[f"{key}_record"] = [c.key() for c in rt.record.calls]
    masks[:] = []

    # -- refused configurations ----------------------------------------------------------------------------
    res["err_ring"] = _errors(lambda: enable_context_parallel(tiny_transformer(), ContextParallelConfig(ring_degree=2)))
    three = _three_heads()
    res["err_heads"] = _errors(lambda: enable_context_parallel(three))
    res["err_heads_exchange"] = _errors(lambda: group.scatter_heads(*(t[:, :59, :3] for t in full), n_video=54))
    runtime_module.xattention_mask = estimate
    return res


def _three_heads():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=3, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=24,
        pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
    ).eval()
