"""Calibration: per-layer, per-head thresholds that keep a quality budget at the lowest density.

One global tau treats every head alike, but heads differ: a local head reaches 90% of its attention mass in a
few blocks, a global one needs most of them. Calibration runs a few prompts (dense: the video is the model's own)
and, at every attention call after the warmup, selects each head's blocks from its antidiagonal scores at a grid
of thresholds and compares them with the exact attention: the mask's density, the true softmax mass the kept
blocks hold and the relative error of the attention output restricted to them (on a sample of query blocks).
Then, per (layer, head), either

- ``mass``: the lowest threshold whose kept true mass reaches the budget (quality first), or
- ``density``: the thresholds that keep the most true mass (or give the least output error, ``by="error"``)
  at a given mean density (speed first; one Lagrange multiplier traded against density, found by bisection),

and writes them as the config's threshold table (``op.threshold: {default, heads: {layer: [tau per head]}}``).

Example::

    profile = profile_thresholds(pipe, ["a red circle moving right"], config, num_frames=9, height=32,
                                 width=32, num_inference_steps=20)
    table = choose_thresholds(profile, mass=0.95)
    calibrated = config.replace(threshold=table)
    calibrated.save("calibrated.yaml")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .backends import resolve_backend
from .block_mask import BlockSparseMask
from .config import XAttentionConfig, ceil_div
from .estimate import block_scores, dense_mask, select_blocks
from .runtime import MaskRequest

DEFAULT_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0)


@dataclass
class ThresholdProfile:
    """Per (layer, head, threshold): summed mask density, kept true mass and relative output error, and how many
    calls were summed.

    ``density[layer]``, ``mass[layer]`` and ``error[layer]`` are ``[H, T]`` float64 sums over calls (each call's
    value is its mean over the batch; density and mass also over query blocks; error is
    ``||O_tau - O|| / ||O||`` over the sampled query blocks); ``calls[layer]`` counts them; ``taus`` is the grid
    (ascending)."""

    taus: tuple[float, ...]
    density: dict[int, torch.Tensor] = field(default_factory=dict)
    mass: dict[int, torch.Tensor] = field(default_factory=dict)
    error: dict[int, torch.Tensor] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, layer: int, density: torch.Tensor, mass: torch.Tensor, error: torch.Tensor) -> None:
        if layer in self.calls:
            self.density[layer] += density
            self.mass[layer] += mass
            self.error[layer] += error
            self.calls[layer] += 1
        else:
            self.density[layer], self.mass[layer], self.error[layer] = density.clone(), mass.clone(), error.clone()
            self.calls[layer] = 1

    def mean_error(self) -> torch.Tensor:
        """Relative output error ``[L, H, T]``, mean over the profiled calls (layers ascending)."""
        self.means()  # the same checks
        return torch.stack([self.error[l] / self.calls[l] for l in sorted(self.calls)])

    def means(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """(layers, density ``[L, H, T]``, kept mass ``[L, H, T]``), means over the profiled calls."""
        if not self.calls:
            raise ValueError("the profile is empty: no sparse call was profiled (are all steps warmup, or is "
                             "every sequence shorter than min_seq_len?)")
        layers = sorted(self.calls)
        heads = {self.density[l].shape[0] for l in layers}
        if len(heads) != 1:
            raise ValueError(f"layers have different head counts {sorted(heads)}; calibration needs one")
        d = torch.stack([self.density[l] / self.calls[l] for l in layers])
        m = torch.stack([self.mass[l] / self.calls[l] for l in layers])
        return layers, d, m

    def to_dict(self) -> dict[str, Any]:
        return {"taus": list(self.taus), "meta": self.meta,
                "layers": {str(l): {"calls": self.calls[l], "density": self.density[l].tolist(),
                                    "mass": self.mass[l].tolist(), "error": self.error[l].tolist()}
                           for l in sorted(self.calls)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ThresholdProfile":
        p = cls(tuple(data["taus"]), meta=dict(data.get("meta", {})))
        for key, v in data["layers"].items():
            layer = int(key)
            p.density[layer] = torch.tensor(v["density"], dtype=torch.float64)
            p.mass[layer] = torch.tensor(v["mass"], dtype=torch.float64)
            # profiles written before the error was measured: NaN, so an error budget refuses them
            p.error[layer] = torch.tensor(v["error"] if "error" in v else torch.full_like(p.mass[layer], math.nan),
                                          dtype=torch.float64)
            p.calls[layer] = int(v["calls"])
        return p

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "ThresholdProfile":
        return cls.from_dict(json.loads(Path(path).read_text()))


class ThresholdProfiler:
    """A mask source (``XAttentionRuntime(mask_source=...)``) that profiles every sparse call and returns the
    dense mask, so the generation stays dense while it measures.

    Args:
        taus: the threshold grid, each in (0, 1].
        query_blocks: how many video query blocks per call get the exact mass and output error, evenly spaced; None:
            all of them (cost: one exact attention per call in float32, chunked).
    """

    def __init__(self, taus: Sequence[float] = DEFAULT_TAUS, query_blocks: int | None = None) -> None:
        taus = tuple(sorted(float(t) for t in taus))
        if not taus or any(not 0.0 < t <= 1.0 for t in taus):
            raise ValueError(f"taus={taus!r}: every threshold must be in (0, 1], at least one")
        if query_blocks is not None and query_blocks < 1:
            raise ValueError(f"query_blocks={query_blocks} must be >= 1 (or None for all)")
        self.profile = ThresholdProfile(taus)
        self.query_blocks = query_blocks

    @torch.no_grad()
    def __call__(self, req: MaskRequest) -> BlockSparseMask:
        op = req.config
        q, k, bs = req.q, req.k, op.block_size
        b, h, n, _ = q.shape
        n_video = n if req.global_start is None else req.global_start
        # video query blocks that lie wholly inside the sequence (a zero-padded query would attend uniformly)
        rows = _sample_rows(max(1, min(ceil_div(n_video, bs), n // bs)), self.query_blocks, q.device)
        q_blocks = torch.nn.functional.pad(q, (0, 0, 0, ceil_div(n, bs) * bs - n)).unflatten(2, (-1, bs))
        q_sel = q_blocks.index_select(2, rows).flatten(2, 3)  # whole blocks, in order: row i is block rows[i]
        backend = resolve_backend(op, q)
        scores = block_scores(q, k, bs, op.stride, req.kv_len, backend, sink_aware=op.sink_aware,
                              precision=op.estimate_precision)
        global_start = req.global_start if op.keep_text else None
        density, keeps = [], []
        for tau in self.profile.taus:
            mask = select_blocks(scores, tau, block_size=bs, q_len=n, kv_len=req.kv_len,
                                 keep_diagonal=op.keep_diagonal, max_density=None, global_start=global_start,
                                 backend=backend)
            keeps.append(mask.to_dense().index_select(2, rows))  # [B, H, R, KB]
            density.append(mask.density_per_head().mean(0).cpu())
        if req.v is None:
            raise ValueError("the profiler needs v (the runtime passes it in every MaskRequest)")
        mass, error = kept_mass_and_error(q_sel, k, req.v, req.kv_len, keeps, bs)
        self.profile.add(req.layer, torch.stack(density, -1), mass.T.cpu(), error.T.cpu())
        return dense_mask(b, n, req.kv_len, k.shape[2], bs, q.device)


@torch.no_grad()
def kept_mass_and_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor,
                        keeps: Sequence[torch.Tensor], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each block mask in ``keeps`` (``[B, H, QB, KB]`` bool over the query blocks of ``q``): the exact
    softmax mass its kept blocks hold (mean over queries) and the relative error of attention restricted to them,
    ``||O_keep - O|| / ||O||`` over all queries; each ``[T, H]``, mean over the batch. Exact attention in float32,
    in chunks of queries (at most 512 MiB per intermediate); keys at or past ``kv_len`` are padding.

    Each query's probabilities and partial outputs are summed per key block once; the masks differ only in which
    blocks they add, so all of them take one product over key blocks, not another pass over every key each."""
    b, h, n, d = q.shape
    nk = k.shape[2]
    kb = ceil_div(nk, block_size)
    pad = kb * block_size - nk
    valid = torch.arange(nk, device=q.device)[None, :] < kv_len.to(q.device)[:, None]
    bias = torch.zeros(b, 1, 1, nk, device=q.device).masked_fill(~valid[:, None, None, :], float("-inf"))
    masks = torch.stack(list(keeps)).float()  # [T, B, H, QB, KB]
    mass = torch.zeros(len(keeps), b, h, dtype=torch.float64, device=q.device)
    err = torch.zeros_like(mass)
    norm = torch.zeros(b, h, dtype=torch.float64, device=q.device)
    kf = k.float()
    v_blocks = torch.nn.functional.pad(v.float(), (0, 0, 0, pad)).unflatten(2, (kb, block_size))  # [B, H, KB, bs, D]
    chunk = max(16, min(2048, (1 << 27) // (b * h * max(nk, kb * d, len(keeps) * d))))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        p = torch.softmax((q[:, :, start:stop].float() @ kf.transpose(-1, -2)) * d ** -0.5 + bias, -1)
        p_blocks = torch.nn.functional.pad(p, (0, pad)).unflatten(-1, (kb, block_size))  # [B, H, c, KB, bs]
        block_mass = p_blocks.sum(-1)  # [B, H, c, KB]
        block_out = torch.einsum("bhckj,bhkjd->bhckd", p_blocks, v_blocks)  # each key block's share of the output
        out = block_out.sum(3)
        norm += out.double().square().sum((-1, -2))
        keep = masks[:, :, :, torch.arange(start, stop, device=q.device) // block_size]  # [T, B, H, c, KB]
        total = torch.einsum("tbhck,bhck->tbhc", keep, block_mass)
        kept_out = torch.einsum("tbhck,bhckd->tbhcd", keep, block_out)  # every threshold in one product
        mass += total.sum(-1, dtype=torch.float64)
        diff = kept_out.div_(total.clamp_min(1e-30)[..., None]).sub_(out)  # in place: the largest intermediate
        err += diff.square_().sum(-1, dtype=torch.float64).sum(-1)
    return (mass / n).mean(1), (err / norm.clamp_min(1e-30)).sqrt().mean(1)


def _sample_rows(num_blocks: int, count: int | None, device: torch.device) -> torch.Tensor:
    if count is None or count >= num_blocks:
        return torch.arange(num_blocks, device=device)
    return torch.linspace(0, num_blocks - 1, count, device=device).round().long().unique()


def choose_thresholds(profile: ThresholdProfile, *, mass: float | None = None,
                      density: float | None = None, by: str = "mass") -> dict[str, Any]:
    """A threshold table from a profile: give exactly one of

    - ``mass`` in (0, 1]: per (layer, head) the lowest threshold whose mean kept true mass reaches it;
    - ``density`` in (0, 1]: the per-head thresholds with a mean density at or below it (the lowest-density
      choice when none is that low) that keep the most true mass summed over heads (``by="mass"``) or give the
      least relative output error summed over heads (``by="error"``).

    Returns ``{"default": tau, "heads": {layer: [tau per head]}}`` (``default``, the median, serves layers the
    profile did not see), ready for ``config.replace(threshold=table)``.

    Example::

        table = choose_thresholds(profile, density=0.3, by="error")
    """
    if (mass is None) == (density is None):
        raise ValueError("give exactly one of mass= (kept true mass per head) or density= (mean density)")
    budget = mass if mass is not None else density
    if not 0.0 < budget <= 1.0:
        name = "mass" if mass is not None else "density"
        raise ValueError(f"{name}={budget!r} is out of range: accepted (0, 1]")
    if by not in ("mass", "error"):
        raise ValueError(f"by={by!r}: accepted 'mass' or 'error'")
    layers, d, m = profile.means()
    taus = torch.tensor(profile.taus, dtype=torch.float64)
    if mass is not None:
        reaches = m >= mass - 1e-9
        reaches[..., -1] = True  # the largest threshold when none reaches the budget
        choice = reaches.double().argmax(-1)  # the first (lowest) threshold that reaches it
    else:
        gain = m if by == "mass" else -profile.mean_error()
        if not torch.isfinite(gain).all():
            raise ValueError("this profile has no output errors (written by an earlier version): profile again, "
                             "or use by='mass'")
        choice = _best_at_density(d, gain, density)
    chosen = taus[choice]  # [L, H]
    return {"default": float(chosen.median()),
            "heads": {layer: [round(float(t), 4) for t in chosen[i]] for i, layer in enumerate(layers)}}


def _best_at_density(d: torch.Tensor, m: torch.Tensor, target: float) -> torch.Tensor:
    """Per head the threshold index maximising gain ``m`` - lam * density, with lam bisected so that the mean
    density is at most ``target``."""
    def pick(lam: float) -> torch.Tensor:
        return (m - lam * d).argmax(-1)

    def mean_density(choice: torch.Tensor) -> float:
        return float(d.gather(-1, choice[..., None]).mean())

    lo, hi = 0.0, 1.0
    while mean_density(pick(hi)) > target and hi < 1e6:
        hi *= 2
    if mean_density(pick(hi)) > target:
        return d.argmin(-1)
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_density(pick(mid)) > target:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def summarise(profile: ThresholdProfile, table: dict[str, Any]) -> dict[str, float]:
    """Mean density, kept true mass and relative output error that ``table`` gave on the profiled calls, and
    what the best single threshold of the grid (most mass) gives at no more density, for comparison."""
    layers, d, m = profile.means()
    e = profile.mean_error()
    taus = list(profile.taus)
    idx = torch.tensor([[taus.index(t) for t in table["heads"][layer]] for layer in layers])[..., None]
    global_d, global_m, global_e = d.mean((0, 1)), m.mean((0, 1)), e.mean((0, 1))  # [T]
    dens = float(d.gather(-1, idx).mean())
    fits = [i for i in range(len(taus)) if global_d[i] <= dens + 1e-9]
    best = max(fits, key=lambda i: float(global_m[i])) if fits else int(global_d.argmin())
    return {"density": dens, "mass": float(m.gather(-1, idx).mean()), "error": float(e.gather(-1, idx).mean()),
            "single_tau": taus[best], "single_tau_density": float(global_d[best]),
            "single_tau_mass": float(global_m[best]), "single_tau_error": float(global_e[best])}


def profile_thresholds(pipe: Any, prompts: Sequence[str], config: XAttentionConfig, *, num_frames: int,
                       height: int, width: int, num_inference_steps: int, seed: int = 0,
                       taus: Sequence[float] = DEFAULT_TAUS, query_blocks: int | None = None,
                       progress: bool = True) -> ThresholdProfile:
    """Generate each prompt once (dense output) with a profiler in place of the estimate; the op's block size,
    stride, token order, ``sink_aware`` and the schedule's warmup and dense layers are ``config``'s, so the
    profile holds for that config (mask reuse and the break-even fallback are off while profiling)."""
    from .pipelines.hunyuan_video import generate
    from .processors import apply_xattention, remove_xattention

    if not prompts:
        raise ValueError("prompts is empty: calibration needs at least one prompt")
    profiler = ThresholdProfiler(taus, query_blocks)
    # the profiler returns every block; dense_above sends such calls to the host's dense attention (fast); no
    # residual: every sparse call must reach the profiler (a residual call attends with its held mask instead)
    profiling = config.replace(mask_reuse_steps=1, dense_above=0.999, max_density=None, residual=False)
    apply_xattention(pipe, profiling, mask_source=profiler)
    try:
        for i, prompt in enumerate(prompts):
            generate(pipe, prompt, num_frames=num_frames, height=height, width=width,
                     num_inference_steps=num_inference_steps, seed=seed + i, progress=progress)
    finally:
        remove_xattention(pipe)
    if not profiler.profile.calls:
        raise ValueError(f"no attention call was profiled: every step is warmup (warmup_steps="
                         f"{config.warmup_steps}, steps={num_inference_steps}) or every sequence is shorter than "
                         f"min_seq_len={config.min_seq_len}; use more steps or a larger video")
    profiler.profile.meta.update(prompts=list(prompts), num_frames=num_frames, height=height, width=width,
                                 num_inference_steps=num_inference_steps, seed=seed, query_blocks=query_blocks,
                                 config=profiling.to_dict())
    return profiler.profile

