"""Issue 14: the persistent Hopper kernel (rows ordered longest first within a head) against the one-row-a-program
kernel of a8e75b0, 544p / 720p at densities 0.3 / 0.15 and a diagonal-only mask; each timed twice, interleaved."""
import json, os, sys
import torch, triton
sys.path.insert(0, ".gpu/i2")
import old as OLD
from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels import block_sparse_attention_gluon as NEW

out = []
print(json.dumps({"l2_bytes": torch.cuda.get_device_properties(0).L2_cache_size, "sms": torch.cuda.get_device_properties(0).multi_processor_count}), flush=True)
def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=800, return_mode="median")
for n in (67_576, 119_056):
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
        a, b = OLD.block_sparse_attention_gluon(q, k, v, mask), NEW.block_sparse_attention_gluon(q, k, v, mask)
        row = {"default_splits": NEW.default_key_splits(k), "n": n, "density": round(mask.density(), 4), "max_abs_new_vs_old": (a.float() - b.float()).abs().max().item()}
        for rep in (1, 2, 3):
            for name, fn in (("old", lambda: OLD.block_sparse_attention_gluon(q, k, v, mask)),
                             ("new", lambda: NEW.block_sparse_attention_gluon(q, k, v, mask)),
                             ("new_splits1", lambda: NEW.block_sparse_attention_gluon(q, k, v, mask, key_splits=1)),
                             ("new_splits2", lambda: NEW.block_sparse_attention_gluon(q, k, v, mask, key_splits=2))):
                ms = bench(fn)
                row[f"{name}{rep}_ms"], row[f"{name}{rep}_tflops"] = round(ms, 3), round(flops / ms / 1e9, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v
json.dump(out, open(sys.argv[1], "w"), indent=1)
