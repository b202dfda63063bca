"""cuDNN frontend's block-sparse attention (BSA, ``nvidia-cudnn-frontend`` 1.32) as a benchmark row. Not part of the
package.

cuDNN's BSA is not a cuDNN graph: it is a set of CuTe DSL kernels in the frontend's Python package, compiled on
first use (JIT, about 1.5 s, cached per process). ``cudnn.block_sparse_attention_forward(q, k, v,
q2k_block_index, block_sparse_num, block_sizes, q2k_block_nums, *, sparse_block_size, softmax_scale, layout,
kv_splits, ...)`` takes per (batch, head, query block) a list of key-block ids and their count: the same layout as
our ``BlockSparseMask`` (``kv_indices`` [B, H, QB, KB] int32, ``kv_counts`` [B, H, QB] int32), so nothing is
rebuilt. With ``sparse_block_size=128`` on an H200 (SM90) it runs its native 128 x 128 Hopper kernel (TMA,
two ping-pong consumer warpgroups); the default on SM90 would be its 64-token kernel. Neither length needs to be a
multiple of 128: the kernel masks keys past ``k.shape[2]`` itself and clips the last query tile, so nothing is
padded. Keys past ``mask.kv_len`` are removed with ``block_sizes`` (valid keys per key block, per sample), which
cuDNN applies inside the softmax, so the result is exact, not a caveat. Layout [B, H, N, D] ("bhsd"), bf16 or
fp16, head_dim 64/96/128 on SM90, H_q a multiple of H_kv.

Example::

    # benchmarks/ is on sys.path when a script there runs
    from cudnn_block_sparse import cudnn_block_sparse_unavailable_reason, make_cudnn_block_sparse
    if (why := cudnn_block_sparse_unavailable_reason()) is None:
        fn = make_cudnn_block_sparse(q, k, v, mask, scale=None)   # converts the mask, compiles, runs once
        ms = bench(fn, quick)                                       # times only the attention call
    python benchmarks/cudnn_block_sparse.py                         # GPU: checks it against our reference

Install on the GPU machine (no internet there; the wheels travel in parts, see .gpu/cudnn/PLAN.md; install.sh
does all of this). Python 3.12 (cp312) wheels; cuda-bindings, numpy and typing-extensions come with the image::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/cudnnfe \\
        nvidia_cudnn_frontend-1.32.0-cp312-*.whl nvidia_cutlass_dsl-4.8.1-py3-none-any.whl \\
        nvidia_cutlass_dsl_libs_base-4.8.1-cp312-*.whl nvidia_cutlass_dsl_libs_core-4.8.1-py3-none-any.whl \\
        nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-*.whl apache_tvm_ffi-0.1.15.post2-cp312-*.whl
    export PYTHONPATH=/tmp/cudnnfe:/tmp/cudnnfe/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH

The second entry is what ``nvidia_cutlass_dsl_packages.pth`` would add (``<nvidia_cutlass_dsl>/dsl_packages``,
which holds ``cutlass``); Python reads no .pth file from PYTHONPATH. Only the cu13 DSL flavour is needed (the
driver runs CUDA 13); ``nvidia-cutlass-dsl``'s own required cu12 flavour is left out on purpose.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from xattn_video.block_mask import BlockSparseMask

BLOCK = 128  # cuDNN BSA supports 64 or 128; ours is 128


def cudnn_block_sparse_unavailable_reason() -> str | None:
    """None when cuDNN's BSA can run here, else one line saying why not."""
    try:
        import cudnn
        # the kernels' module imports CuTe DSL (cutlass), cuda-bindings and tvm_ffi: fail here, not in the builder
        from cudnn.block_sparse_attention import _interface  # noqa: F401
        from cudnn.block_sparse_attention.api import block_sparse_attention_forward  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is a reason, reported on one line
        msg = (str(e).strip().splitlines() or [""])[0]
        return f"cuDNN frontend BSA not importable: {type(e).__name__}: {msg}"
    version = tuple(int(p) for p in cudnn.__version__.split(".")[:2])
    if version < (1, 32):
        return f"cuDNN frontend {cudnn.__version__} < 1.32"
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major not in (9, 10, 11, 12):
        return f"cuDNN BSA needs SM90-SM120, found SM{major}{minor}"
    return None


def make_cudnn_block_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask, scale: float | None = None,
    *, kv_splits: int = 1, warmup: bool = True,
) -> Callable[[], torch.Tensor]:
    """A zero-argument function computing ``mask``'s block-sparse attention with cuDNN ([B, H, N, D] out).

    q, k, v: [B, H, N, D] bf16/fp16 (N of q and k may differ and need not be multiples of 128). The mask is
    converted once here; ``warmup`` runs the function once so the JIT compile is outside any timing and a failure
    is raised here. ``kv_splits`` > 1 is cuDNN's split-KV (SM90 only), off by default as in its own default.
    """
    from cudnn.block_sparse_attention.api import block_sparse_attention_forward

    if mask.block_size != BLOCK:
        raise ValueError(f"cuDNN BSA is wired for block_size {BLOCK}, mask has {mask.block_size}")
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    if mask.num_q_blocks != math.ceil(n_q / BLOCK) or tuple(mask.kv_counts.shape) != (b, h, mask.num_q_blocks):
        raise ValueError(f"mask {tuple(mask.kv_indices.shape)} does not fit q {tuple(q.shape)}")
    # TMA needs a unit-stride head dim and 16-byte rows; our tensors already are, so this copies nothing
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    counts = mask.kv_counts.to(torch.int32).contiguous()
    # cuDNN reads only the first `count` ids; the -1 padding becomes a valid id anyway, in case a kernel prefetches
    index = mask.kv_indices.to(torch.int32).clamp_min(0).contiguous()
    block_sizes = None
    kv_len = mask.kv_len.to(device=q.device, dtype=torch.long)
    if bool((kv_len < n_k).any()):  # padded keys: valid keys per key block, so cuDNN masks them in the softmax
        start = torch.arange(math.ceil(n_k / BLOCK), device=q.device) * BLOCK
        block_sizes = (kv_len[:, None] - start).clamp(0, BLOCK).to(torch.int32)  # [B, KB]
        if b == 1:
            block_sizes = block_sizes[0].contiguous()  # [KB]: the one form every architecture accepts
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

    def run() -> torch.Tensor:
        return block_sparse_attention_forward(
            q, k, v, index, None, block_sizes, counts, sparse_block_size=BLOCK, allow_empty_block_nums=True,
            softmax_scale=scale, layout="bhsd", kv_splits=kv_splits,
        )["o_tensor"]

    if warmup:
        run()
        torch.cuda.synchronize()
    return run


def _self_check() -> int:
    """GPU: cuDNN BSA vs our fp32 reference on small masks with partial blocks and padded keys."""
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from xattn_video.block_mask import BlockSparseMask
    from xattn_video.kernels.reference import block_sparse_attention_reference

    if (why := cudnn_block_sparse_unavailable_reason()) is not None:
        print(why)
        return 2
    import cudnn
    import cutlass

    print(f"cudnn {cudnn.__version__} cutlass-dsl {cutlass.__version__} {torch.cuda.get_device_name()}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    worst = 0.0
    # (B, H, N, kv_len per sample): a partial last block, keys padded inside it and past it, two kv_lens per batch
    for bsz, heads, n, kv in ((1, 2, 1000, (1000,)), (1, 3, 1000, (990,)), (2, 2, 1300, (1300, 1100))):
        q, k, v = (torch.randn(bsz, heads, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        nb = math.ceil(n / BLOCK)
        keep = torch.rand(bsz, heads, nb, nb, device="cuda", generator=gen) < 0.5
        keep |= torch.eye(nb, dtype=torch.bool, device="cuda")  # no empty row
        mask = BlockSparseMask.from_dense(keep, BLOCK, n, torch.tensor(kv, device="cuda"))
        t0 = time.perf_counter()
        out = make_cudnn_block_sparse(q, k, v, mask)()
        secs = time.perf_counter() - t0
        err = float((out.float() - block_sparse_attention_reference(q, k, v, mask).float()).abs().max())
        worst = max(worst, err)
        print(f"B={bsz} H={heads} N={n} kv_len={kv}: max abs err {err:.2e} (build+run {secs:.1f} s)", flush=True)
    print("OK" if worst < 2e-2 else "MISMATCH")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(_self_check())
