"""Issue 14: query blocks per program (1 / 2 / 4) of the Hopper kernel at 544p / 720p, density 0.3 / 0.15, and a
diagonal-only mask (one tile a row: the fixed cost of a program)."""
import json, os, sys
import torch, triton
from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels.block_sparse_attention_gluon import block_sparse_attention_gluon
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton

out = []
def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
for n in (119_056, 67_576):
    h = 24
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qb = triton.cdiv(n, 128)
    kv_len = torch.tensor([n], device="cuda")
    for density in (0.3, 0.15, 0.0):
        keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
        keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
        mask = BlockSparseMask.from_dense(keep, 128, n, kv_len)
        flops = 4.0 * n * n * 128 * h * mask.density()
        row = {"n": n, "density": round(mask.density(), 4)}
        for blocks in (1, 2, 4):
            ms = bench(lambda: block_sparse_attention_gluon(q, k, v, mask, blocks_per_program=blocks))
            row[f"blocks{blocks}_ms"], row[f"blocks{blocks}_tflops"] = round(ms, 3), round(flops / ms / 1e9, 1)
        ms = bench(lambda: block_sparse_attention_gluon(q, k, v, mask))
        row["default_ms"], row["default_tflops"] = round(ms, 3), round(flops / ms / 1e9, 1)
        os.environ["XATTN_NO_GLUON"] = "1"
        ms = bench(lambda: block_sparse_attention_triton(q, k, v, mask))
        del os.environ["XATTN_NO_GLUON"]
        row["triton_ms"], row["triton_tflops"] = round(ms, 3), round(flops / ms / 1e9, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v
json.dump(out, open(sys.argv[1], "w"), indent=1)
