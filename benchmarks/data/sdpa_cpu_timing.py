"""Ad hoc (2026-11-29): the attention op on a CPU, reference twin vs the SDPA path, at the proxy's default size.

    python benchmarks/data/sdpa_cpu_timing.py
"""
import time

import torch

from xattn_video.estimate import estimate_mask
from xattn_video.kernels.reference import block_sparse_attention_reference
from xattn_video.kernels.sdpa import block_sparse_attention_sdpa

torch.set_num_threads(2)
b, h, d = 1, 4, 64
n = 2304 + 8  # the proxy's default 9 x 32 x 32 video (2,304 tokens) + 8 text tokens, 7 valid
for seed, scale in ((0, 1.0), (1, 3.0)):  # flat and peakier logits: two densities
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    q = q * scale
    kv = torch.tensor([n - 1])
    mask = estimate_mask(q, k, block_size=64, stride=8, threshold=0.9, kv_len=kv, keep_diagonal=True,
                         global_start=2304, backend="reference")
    times = {}
    for name, fn in (("reference", block_sparse_attention_reference), ("sdpa", block_sparse_attention_sdpa)):
        fn(q, k, v, mask)
        t0 = time.perf_counter()
        for _ in range(5):
            out = fn(q, k, v, mask)
        times[name] = (time.perf_counter() - t0) / 5 * 1e3
    diff = float((block_sparse_attention_sdpa(q, k, v, mask) - block_sparse_attention_reference(q, k, v, mask)).abs().max())
    print(f"density {mask.density():.3f}: reference {times['reference']:.0f} ms, sdpa {times['sdpa']:.0f} ms "
          f"({times['reference'] / times['sdpa']:.1f}x), max |diff| {diff:.1e}")
