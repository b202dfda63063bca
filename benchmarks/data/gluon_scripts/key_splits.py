"""Issue 14: does splitting the keys into ranges (one launch per range, all heads) keep K / V in the L2 at 720p?
Timing only: the warp-specialized Gluon kernel on the whole mask against the sum over key ranges."""
import json, sys
import torch, triton
sys.path.insert(0, "benchmarks")
import gluon_bsa as G
from xattn_video.block_mask import BlockSparseMask

out = []
def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
for n in (119_056, 67_576):
    h = 24
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qb = triton.cdiv(n, 128)
    kv_len = torch.tensor([n], device="cuda", dtype=torch.int32)
    for density in (0.3, 0.15):
        keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
        keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
        flops = 4.0 * n * n * 128 * h * keep.float().mean().item()
        row = {"n": n, "density": round(keep.float().mean().item(), 4)}
        for splits in (1, 2, 3, 4):
            bounds = [round(i * qb / splits) for i in range(splits + 1)]
            cols = torch.arange(qb, device="cuda")
            parts = []
            for s in range(splits):
                ks = keep & (cols >= bounds[s]) & (cols < bounds[s + 1])
                ks[..., bounds[s]] |= ~ks.any(-1)  # no empty rows (the experiment kernel needs one block)
                m = BlockSparseMask.from_dense(ks, 128, n, kv_len)
                parts.append((m.kv_indices.reshape(h, qb, -1).to(torch.int32).contiguous(),
                              m.kv_counts.reshape(h, qb).to(torch.int32).contiguous()))
            def run(parts=parts):
                for idx, cnt in parts:
                    G.gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len, variant="ws", stages=3)
            ms = bench(run)
            row[f"splits{splits}_ms"] = round(ms, 2)
            row[f"splits{splits}_tflops"] = round(flops / ms / 1e9, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v
json.dump(out, open(sys.argv[1], "w"), indent=1)
