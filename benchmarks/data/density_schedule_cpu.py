"""Ad hoc CPU screen (2026-11-29): a max_density schedule over the sparse steps at the same mean (proxy, 9x32x32).

    python benchmarks/data/density_schedule_cpu.py [captions]
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import torch
torch.set_num_threads(2)
from bench_quality import run, judge
from xattn_video import XAttentionConfig
from xattn_video.estimate import estimate_mask
from xattn_video.pipelines.hunyuan_video import load_pipeline
from xattn_video.proxy.data import caption_split
size = {"frames": 9, "height": 32, "width": 32}
steps, block, warm = 20, 64, 2
pipe = load_pipeline(None, device=torch.device("cpu"))
_, held = caption_split()
caps = held[:int(sys.argv[1]) if len(sys.argv) > 1 else 4]; seeds = [40_000 + i for i in range(len(caps))]
refs, _ = run(pipe, caps, seeds, size, steps, len(caps), None, None)

def source_for(lo, hi):
    def src(req):
        frac = (req.step - warm) / max(1, steps - 1 - warm)
        cap = lo + (hi - lo) * frac
        return estimate_mask(req.q, req.k, block_size=block, stride=8, threshold=0.95, kv_len=req.kv_len,
                             keep_diagonal=True, max_density=cap, global_start=req.global_start, backend="reference")
    return src

cfg = XAttentionConfig(block_size=block, stride=8, threshold=0.95, warmup_steps=warm)
for mean in (0.15, 0.3):
    for name, lo, hi in (("constant", mean, mean), ("decreasing", mean * 5 / 3, mean / 3), ("increasing", mean / 3, mean * 5 / 3)):
        t0 = time.time()
        vids, st = run(pipe, caps, seeds, size, steps, len(caps), cfg, source_for(lo, hi))
        r = {"mean_cap": mean, "schedule": name, "density": round(st["density"], 4), **{k: round(v, 3) for k, v in judge(refs, vids, caps).items()}, "s": round(time.time() - t0)}
        print(r, flush=True)
