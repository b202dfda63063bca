"""Issue 14: where a program's time goes in the Hopper kernel (clock64 stamps per program, consumer warpgroup 0
and the producer), 544p / 720p, density 0.15 and a diagonal-only mask."""
import json, sys
import numpy as np
import torch, triton
sys.path.insert(0, ".gpu/i1")
import exp as E
from xattn_video.block_mask import BlockSparseMask
from xattn_video.kernels.block_sparse_attention_gluon import block_sparse_attention_gluon

out = []
def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")
for n in (67_576, 119_056):
    h = 24
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qb = triton.cdiv(n, 128)
    kv_len = torch.tensor([n], device="cuda")
    splits = E.default_key_splits(k)
    for density in (0.15, 0.0):
        keep = torch.rand(1, h, qb, qb, device="cuda", generator=g) < density
        keep |= torch.eye(qb, dtype=torch.bool, device="cuda")
        mask = BlockSparseMask.from_dense(keep, 128, n, kv_len)
        flops = 4.0 * n * n * 128 * h * mask.density()
        ts = [torch.zeros(qb * h, 8, dtype=torch.int64, device="cuda") for _ in range(splits)]
        ref = block_sparse_attention_gluon(q, k, v, mask)
        o = E.block_sparse_attention_gluon(q, k, v, mask, ts=ts)
        row = {"n": n, "density": round(mask.density(), 4), "splits": splits,
               "max_abs_vs_package": (o.float() - ref.float()).abs().max().item()}
        ms_pkg = bench(lambda: block_sparse_attention_gluon(q, k, v, mask))
        ms_exp = bench(lambda: E.block_sparse_attention_gluon(q, k, v, mask, ts=ts))
        row.update(package_ms=round(ms_pkg, 3), package_tflops=round(flops / ms_pkg / 1e9, 1),
                   stamped_ms=round(ms_exp, 3), stamped_tflops=round(flops / ms_exp / 1e9, 1))
        cnts = torch.stack([c for _, c in E.split_rows(mask.kv_indices.to(torch.int32), mask.kv_counts, qb, splits)])
        for r in range(splits):
            t = ts[r].cpu().numpy().astype(np.int64)
            c = cnts[r].reshape(-1).cpu().numpy()
            sm, c1, c2, c3, c4, c5, p6, p7 = t.T
            has = c > 0
            st = {"programs": int(len(t)), "mean_count": float(c.mean()),
                  "producer_desc_cycles": float(np.median(p7 - p6)),
                  "producer_start_minus_consumer_start": float(np.median(p6 - c1)),
                  "q_wait_cycles": float(np.median(c2 - c1)),
                  "first_logits_cycles": float(np.median((c3 - c2)[has])),
                  "loop_cycles": float(np.median((c4 - c3)[has])),
                  "loop_cycles_per_tile": float(np.median(((c4 - c3)[has]) / np.maximum(c[has], 1))),
                  "epilogue_cycles": float(np.median(c5 - c4)),
                  "program_cycles": float(np.median(c5 - c1))}
            # gaps between consecutive programs on one multiprocessor (clock64 is per SM)
            gaps, busy, span = [], 0, 0
            for s_id in np.unique(sm):
                sel = np.argsort(c1[sm == s_id])
                a, z = c1[sm == s_id][sel], c5[sm == s_id][sel]
                gaps.extend((a[1:] - z[:-1]).tolist())
                busy += int((z - a).sum()); span += int(z.max() - a.min())
            st["gap_cycles_median"] = float(np.median(gaps)); st["gap_cycles_p90"] = float(np.percentile(gaps, 90))
            st["busy_share"] = busy / span
            st["span_cycles_mean_per_sm"] = span / len(np.unique(sm))
            row[f"range{r}"] = st
        out.append(row)
        print(json.dumps(row), flush=True)
    del q, k, v
json.dump(out, open(sys.argv[1], "w"), indent=1)
