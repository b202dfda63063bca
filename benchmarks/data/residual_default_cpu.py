"""Ad hoc CPU screen (2026-11-29): the default preset proxy_cpu (tau 0.9, 9x32x32, 20 steps, 2 dense) with and
without the residual, on 8 held-out captions x 1 seed of the embedded proxy (a model trained here on procedural
video). Usage: python benchmarks/data/residual_default_cpu.py OUT.json"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_quality import judge, run  # noqa: E402

from xattn_video.config import load_config  # noqa: E402
from xattn_video.pipelines.hunyuan_video import load_pipeline  # noqa: E402
from xattn_video.proxy.data import caption_split  # noqa: E402

pipe = load_pipeline(None, device="cpu")
_, held = caption_split()
captions, seeds = held[:8], [40_000 + i for i in range(8)]
size = {"frames": 9, "height": 32, "width": 32}
base = load_config("proxy_cpu").replace(residual=False)  # the preset as it was when this ran
refs, dense = run(pipe, captions, seeds, size, 20, 8, None, None)
rows = []
for name, cfg in (("proxy_cpu", base), ("proxy_cpu + residual", base.replace(residual=True)),
                  ("proxy_cpu + residual, refresh 8", base.replace(residual=True, residual_refresh=8)),
                  ("tau 0.95", base.replace(threshold=0.95))):
    t0 = time.perf_counter()
    videos, stats = run(pipe, captions, seeds, size, 20, 8, cfg, None)
    rows.append({"method": name, **stats, **judge(refs, videos, captions)})
    print(f"{name}: density {stats['density']:.3f}, PSNR {rows[-1]['psnr']:.2f}, SSIM {rows[-1]['ssim']:.4f}, "
          f"follows {rows[-1]['follow']:.2f}, {time.perf_counter() - t0:.0f} s", flush=True)
    Path(sys.argv[1]).write_text(json.dumps({"dense": dense, "rows": rows}, indent=1, default=str))
