"""Issue 14: where the block-sparse kernel's time goes. 720p / 544p, density 0.3: the Gluon kernel with its
softmax left out, and with each row's kept blocks the first `cnt` ones (every program reads the same tiles in the
same order: the L2 holds them); the Triton kernel on both masks; dense cuDNN and a bf16 matrix product as ceilings."""
import json, sys, time, math
import torch, triton
sys.path.insert(0, "benchmarks")
import gluon_bsa as G
from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels.block_sparse_attention import block_sparse_attention_triton

out = {"cases": []}
def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
ms = bench(lambda: a @ b); out["matmul_tflops"] = 2 * 8192**3 / ms / 1e9; del a, b
print(json.dumps(out), flush=True)
for n in (119_056, 67_576):
    h, density = 24, 0.3
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qb = triton.cdiv(n, 128)
    keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
    keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
    kv_len = torch.tensor([n], device="cuda", dtype=torch.int32)
    masks = {"random": BlockSparseMask.from_dense(keep, 128, n, kv_len)}
    cnt0 = keep.sum(-1, keepdim=True)
    masks["prefix"] = BlockSparseMask.from_dense(torch.arange(qb, device="cuda") < cnt0, 128, n, kv_len)
    from torch.nn.attention import sdpa_kernel, SDPBackend
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    out["cases"].append({"n": n, "dense_cudnn_tflops": 4.0 * n * n * 128 * h / ms / 1e9, "ms": ms})
    print(json.dumps(out["cases"][-1]), flush=True)
    for mname, mask in masks.items():
        idx = mask.kv_indices.reshape(h, qb, -1).to(torch.int32).contiguous()
        cnt = mask.kv_counts.reshape(h, qb).to(torch.int32).contiguous()
        flops = 4.0 * n * n * 128 * h * mask.density()
        for precision in ("native", "fp8"):
            row = {"n": n, "mask": mname, "precision": precision, "density": mask.density()}
            fns = {"gluon": lambda: G.gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len, precision=precision),
                   "gluon_no_softmax": lambda: G.gluon_block_sparse_attention(q, k, v, idx, cnt, kv_len,
                                                                             precision=precision, no_softmax=True),
                   "triton": lambda: block_sparse_attention_triton(q, k, v, mask, precision=precision)}
            for label, fn in fns.items():
                try:
                    ms = bench(fn)
                    row[label + "_tflops"] = round(flops / ms / 1e9, 1)
                except Exception as e:
                    row[label + "_error"] = str(e)[:300]
            out["cases"].append(row)
            print(json.dumps(row), flush=True)
    del q, k, v
    torch.cuda.empty_cache()
json.dump(out, open(sys.argv[1], "w"), indent=1)
