"""Held-out caption following of a proxy folder on the CPU, as shipped (its scheduler, no CFG), 9x32x32, 20 steps.

    python benchmarks/data/proxy_follow_cpu.py xattn_video/proxy/checkpoint OUT.json     # ~25 min on 2 cores
"""
import json, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # run from a checkout without installing
import torch
from xattn_video.proxy.data import caption_split
from xattn_video.proxy.model import load_proxy
from xattn_video.proxy.train import sample
from train_proxy import follow_table
torch.manual_seed(0)
folder = sys.argv[1]
pipe = load_proxy(folder)
_, held = caption_split(seed=0)
caps = [c for c in held for _ in range(2)]
seeds = [20_000 + i for i in range(len(caps))]
t0 = time.perf_counter()
vids = sample(pipe, caps, seeds, steps=20, cfg=1.0, batch=16, frames=9, height=32, width=32, progress=True)
res = {"model": folder, "device": "cpu (2 cores), float32", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
       "sampler": "shift 3 (the checkpoint's scheduler), no CFG, 20 steps, 9x32x32", "seconds": time.perf_counter() - t0,
       **follow_table(vids, caps)}
print(json.dumps({k: v for k, v in res.items() if k != "per_caption"}))
json.dump(res, open(sys.argv[2], "w"), indent=1)
