"""CPU check at the proxy's default size: plain cap vs calibrated by mass vs by error, same density."""
import json, time
import numpy as np, torch
from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
from xattn_video.calibrate import ThresholdProfiler, choose_thresholds, summarise
from xattn_video.metrics.fidelity import video_psnr
from xattn_video.pipelines.hunyuan_video import load_pipeline
from xattn_video.proxy.data import caption_split
from xattn_video.proxy.train import sample
t0 = time.time()
pipe = load_pipeline()
train, held = caption_split()
size = dict(frames=9, height=32, width=32)
steps, target = 20, 0.4
base = XAttentionConfig(block_size=64, stride=8, warmup_steps=2)
prof = ThresholdProfiler()
apply_xattention(pipe, base, mask_source=prof)
sample(pipe, train[::40][:2], [50_000, 50_001], steps=steps, batch=2, **size)
remove_xattention(pipe)
print("profiled", round(time.time() - t0), flush=True)
caps = held[::8][:4]
seeds = [40_000 + i for i in range(len(caps))]
refs = sample(pipe, caps, seeds, steps=steps, batch=4, **size)
res = {}
for name, cfg in {"cap": base.replace(threshold=0.95, max_density=target),
                  "mass": base.replace(threshold=choose_thresholds(prof.profile, density=target)),
                  "error": base.replace(threshold=choose_thresholds(prof.profile, density=target, by="error"))}.items():
    rt = apply_xattention(pipe, cfg)
    vids = sample(pipe, caps, seeds, steps=steps, batch=4, **size)
    dens = rt.record.mean_density_after_warmup()
    remove_xattention(pipe)
    res[name] = {"density": dens, "psnr": float(np.mean([video_psnr(r, v) for r, v in zip(refs, vids)]))}
    if name != "cap":
        res[name]["profile"] = summarise(prof.profile, cfg.op.threshold if isinstance(cfg.op.threshold, dict) else None)
    print(name, res[name], round(time.time() - t0), flush=True)
json.dump(res, open("/tmp/cpu_cal.json", "w"), indent=1, default=str)
