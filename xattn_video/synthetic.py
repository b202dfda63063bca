"""Structured, video-like Q/K/V for benchmarks and quality checks where no real weights exist.

Tokens sit on a t x h x w grid (frame-major, as HunyuanVideo orders them after patchify). Queries and keys
are random Fourier features of the token's 3D position, so ``q_i . k_j`` approximates a Gaussian kernel of
the distance between tokens i and j: nearby tokens in time and space attend to each other. Each head gets its
own length scales (some more temporal, some more spatial). A few global video tokens are attended by every
query, and optional text tokens (the last ``n_text - n_text_valid`` of them padding) are appended.

``planted_sink`` builds the smallest case of a key that few queries attend to strongly (the case the
antidiagonal mean underrates).

Example::

    q, k, v, kv_len = video_qkv(33, 45, 80, n_text=256, n_text_valid=200, device="cuda")   # 720p x 129f
    q, k, sink_block = planted_sink(seed=0)        # query block 1 of 8 gives ~13% of its mass to block 5
"""

from __future__ import annotations

import math

import torch


def video_qkv(
    t: int,
    h: int,
    w: int,
    n_text: int = 0,
    n_text_valid: int | None = None,
    heads: int = 24,
    head_dim: int = 128,
    batch: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    locality: float = 2.5,
    n_global: int = 4,
    sharpness: float = 16.5,
    noise: float = 0.3,
    v_smooth: float = 0.0,
    chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Video-like ``(q, k, v, kv_len)``: q, k, v ``[batch, heads, t*h*w + n_text, head_dim]``, kv_len ``[batch]``.

    Args:
        t, h, w: latent token grid (frames, height, width).
        n_text, n_text_valid: text tokens appended after the video; keys past ``t*h*w + n_text_valid`` are
            padding (``kv_len``). ``n_text_valid`` defaults to ``n_text``.
        locality: typical length scale of a head's attention, in grid cells (each head varies it per axis).
        n_global: video tokens that every query attends to (attention sinks).
        sharpness: the scaled logit ``q.k / sqrt(D)`` of a token with itself; higher = more peaked attention.
        noise: standard deviation of the i.i.d. noise added to q and k, relative to the features' scale.
        v_smooth: in [0, 1): share of each value vector that is a smooth function of position (neighbours
            carry similar values, as in a video model's features); 0 = i.i.d. Gaussian values.
        chunk: tokens generated per step (bounds the memory of the intermediates).

    Deterministic for a given seed and device; generated on ``device`` chunk by chunk.
    """
    if not 0.0 <= v_smooth < 1.0:
        raise ValueError(f"v_smooth={v_smooth} must be in [0, 1)")
    if min(t, h, w) < 1 or heads < 1 or batch < 1 or head_dim < 2 or head_dim % 2:
        raise ValueError(f"bad sizes t={t}, h={h}, w={w}, heads={heads}, batch={batch}, head_dim={head_dim} "
                         f"(all >= 1, head_dim even)")
    n_text_valid = n_text if n_text_valid is None else n_text_valid
    if not 0 <= n_text_valid <= n_text:
        raise ValueError(f"n_text_valid={n_text_valid} must be in 0..n_text={n_text}")
    device = torch.device(device)
    n_video = t * h * w
    n = n_video + n_text
    f = head_dim // 2
    # small per-head parameters from a CPU generator (same on every device); bulk noise from the device's
    cpu = torch.Generator().manual_seed(seed)
    scales = locality * torch.exp2(torch.rand(heads, 3, generator=cpu) * 2.0 - 1.0)  # per head, per axis
    omega = torch.randn(heads, f, 3, generator=cpu) / scales[:, None, :]  # Gaussian kernel of width `scales`
    phase = torch.rand(heads, f, generator=cpu) * (2 * math.pi)
    # |phi(x)|^2 = amp^2 * f, so q.k / sqrt(D) of a token with itself is `sharpness`
    amp = math.sqrt(sharpness * math.sqrt(head_dim) / f)
    u = torch.randn(heads, head_dim, generator=cpu)
    u = u / u.norm(dim=-1, keepdim=True)  # the "global" direction
    g_idx = torch.randperm(n_video, generator=cpu)[: min(n_global, n_video)]
    omega, phase, u = (x.to(device) for x in (omega, phase, u))

    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    out_shape = (batch, heads, n, head_dim)
    q = torch.empty(out_shape, dtype=dtype, device=device)
    k = torch.empty(out_shape, dtype=dtype, device=device)
    v = torch.empty(out_shape, dtype=dtype, device=device)
    sig = noise * amp  # noise relative to one feature's amplitude
    q_global = 0.5 * math.sqrt(sharpness * math.sqrt(head_dim))  # every query leans on u a little ...
    k_global = 2.0 * math.sqrt(sharpness * math.sqrt(head_dim))  # ... global keys lean on it a lot
    for s in range(0, n_video, chunk):
        e = min(n_video, s + chunk)
        idx = torch.arange(s, e, device=device)
        pos = torch.stack((idx // (h * w), (idx // w) % h, idx % w), -1).float()  # [c, 3]
        ang = torch.einsum("cx,hfx->hcf", pos, omega) + phase[:, None, :]
        feat = amp * torch.cat((ang.cos(), ang.sin()), -1)  # [H, c, D]
        for bi in range(batch):
            nq = torch.randn(feat.shape, generator=dev_gen, device=device)
            nk = torch.randn(feat.shape, generator=dev_gen, device=device)
            q[bi, :, s:e] = (feat + sig * nq + q_global * u[:, None, :]).to(dtype)
            k[bi, :, s:e] = (feat + sig * nk).to(dtype)
            nv = torch.randn(feat.shape, generator=dev_gen, device=device)
            # feat.roll mixes in other frequencies, so values are smooth in position but differ from q/k
            smooth = feat.roll(1, dims=-1) / amp
            v[bi, :, s:e] = (v_smooth * smooth + math.sqrt(1 - v_smooth**2) * nv).to(dtype)
    if len(g_idx):
        g = g_idx.to(device)
        k[:, :, g] = (k[:, :, g].float() + k_global * u[None, :, None, :]).to(dtype)
    if n_text:
        shape = (batch, heads, n_text, head_dim)
        # text queries attend broadly; text keys are moderately attended by everyone
        q[:, :, n_video:] = (amp * torch.randn(shape, generator=dev_gen, device=device)).to(dtype)
        k[:, :, n_video:] = (amp * torch.randn(shape, generator=dev_gen, device=device)
                             + 0.5 * k_global * u[None, :, None, :]).to(dtype)
        v[:, :, n_video:] = torch.randn(shape, generator=dev_gen, device=device).to(dtype)
    kv_len = torch.full((batch,), n_video + n_text_valid, dtype=torch.long, device=device)
    return q, k, v, kv_len


def planted_sink(
    seed: int = 0, sink_logit: float = 12.0, block_size: int = 32, stride: int = 8, n_blocks: int = 8,
    head_dim: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A planted attention sink: ``(q, k, sink_block)``, q and k ``[1, 1, n_blocks * block_size, head_dim]``.

    Every query of query block 1 attends to key blocks 0 and 1 (scaled logit 4). One query in each stride
    group of query block 1 (the one the antidiagonal pairs with the sink key's offset, so ``block_size /
    stride`` queries in all) also attends to one key of block 5 with scaled logit ``sink_logit``. Block 5
    then holds ~1/stride of the row's true mass while the antidiagonal *mean* (sink_logit / stride) ranks it
    below blocks 0 and 1 by far. Small i.i.d. noise from ``seed`` makes the inputs fresh per seed.

    Example::

        q, k, b = planted_sink(seed=3)
        # estimate_mask(q, k, block_size=32, stride=8, threshold=0.9, sink_aware=True) keeps block b in row 1
    """
    if n_blocks < 6 or block_size % stride or head_dim < 2:
        raise ValueError(f"n_blocks={n_blocks} (>= 6), block_size={block_size} (a multiple of stride={stride}) "
                         f"and head_dim={head_dim} (>= 2) are out of range")
    g = torch.Generator().manual_seed(seed)
    n, bs, s = n_blocks * block_size, block_size, stride
    q = 0.1 * torch.randn(1, 1, n, head_dim, generator=g)
    k = 0.1 * torch.randn(1, 1, n, head_dim, generator=g)
    local = math.sqrt(4.0 * math.sqrt(head_dim))  # q.k / sqrt(D) = 4 along the local direction
    sink = math.sqrt(sink_logit * math.sqrt(head_dim))
    q[0, 0, bs:2 * bs, 0] += local
    k[0, 0, : 2 * bs, 0] += local
    c = int(torch.randint(s, (1,), generator=g))  # the sink key's offset in its stride group
    sink_key = 5 * bs + int(torch.randint(bs // s, (1,), generator=g)) * s + c
    k[0, 0, sink_key, 1] += sink
    q[0, 0, bs + (s - 1 - c):2 * bs:s, 1] += sink  # antidiagonal partner of the sink in every stride group
    return q, k, 5
