"""Train the proxy model on procedural video with flow matching, in stages of growing video size.

Flow matching as HunyuanVideo's scheduler integrates it: ``x_s = (1 - s) x0 + s noise`` with ``s`` drawn from a
logit-normal, the transformer sees ``timestep = 1000 s`` and predicts ``noise - x0``. Captions are dropped
(replaced by the empty prompt) 10% of the time so that classifier-free guidance can be used when sampling. An
exponential moving average of the weights is what gets saved.

Example (CPU, toy size)::

    pipe = proxy_pipeline(proxy_components(seed=0))
    log = train_proxy(pipe, [Stage(frames=5, height=16, width=16, batch=4, steps=20)], seed=0)
    log.losses[-1] < log.losses[0]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .data import caption_split, render, sample_specs
from .model import proxy_call_kwargs

CAPTION_DROPOUT = 0.1


@dataclass(frozen=True)
class Stage:
    """One training stage: video size, batch, and a length in steps or seconds (whichever ends first).
    ``also`` lists more (frames, height, width, batch) sizes that alternate with the first, step by step."""

    frames: int
    height: int
    width: int
    batch: int
    steps: int | None = None
    seconds: float | None = None
    lr: float = 3e-4
    also: tuple[tuple[int, int, int, int], ...] = ()

    def sizes(self) -> list[tuple[int, int, int, int]]:
        return [(self.frames, self.height, self.width, self.batch), *self.also]

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("a Stage needs steps or seconds")


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean loss over each logging window
    stage_of_step: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "losses": self.losses, "stage": self.stage_of_step, "seconds": self.seconds}


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt_embeds [N, L, C], attention mask [N, L], pooled [N, P]) exactly as the pipeline computes them."""
    kw = proxy_call_kwargs(pipe)
    embeds, pooled, mask = pipe.encode_prompt(prompt=captions, prompt_template=kw["prompt_template"],
                                              max_sequence_length=kw["max_sequence_length"],
                                              device=pipe.transformer.device)
    return embeds.float(), mask, pooled.float()


class _Ema:
    """Exponential moving average of a model's float parameters (warming up from short horizons)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.params, model.parameters()):
            e.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.params, model.parameters()):
            p.copy_(e)


def train_proxy(pipe: Any, stages: list[Stage], seed: int = 0, captions: list[str] | None = None,
                ema_decay: float = 0.999, log_every: int = 25, progress: Callable[[str], None] | None = print,
                warmup_steps: int = 100) -> TrainLog:
    """Train ``pipe.transformer`` in place through ``stages``; leaves the EMA weights in it. Deterministic from
    ``seed`` for a given device (GPU kernels aside)."""
    model = pipe.transformer
    device = model.device
    cuda = device.type == "cuda"
    captions = captions if captions is not None else caption_split()[0]
    table = encode_captions(pipe, captions + [""])  # the last row is the empty prompt (caption dropout)
    caption_row = {c: i for i, c in enumerate(captions)}
    guidance = torch.tensor(pipe.xattn_proxy_info.guidance_scale * 1000.0, device=device)

    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=stages[0].lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = _Ema(model, ema_decay)
    gen = torch.Generator().manual_seed(seed)
    log, window, step, t_start = TrainLog(), [], 0, time.perf_counter()
    for s_idx, stage in enumerate(stages):
        t0, s_step = time.perf_counter(), 0
        while True:
            if stage.steps is not None and s_step >= stage.steps:
                break
            if stage.seconds is not None and time.perf_counter() - t0 >= stage.seconds:
                break
            frames, height, width, batch = stage.sizes()[s_step % len(stage.sizes())]
            spec = sample_specs(captions, batch, gen)
            x0 = render(spec, frames, height, width, device=device)
            rows = torch.tensor([caption_row[c] for c in spec.captions])
            rows = torch.where(torch.rand(batch, generator=gen) < CAPTION_DROPOUT, len(captions), rows)
            emb, mask, pooled = (t[rows.to(device)] for t in table)
            sigma = torch.sigmoid(torch.randn(batch, generator=gen)).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            s = sigma[:, None, None, None, None]
            x_t = (1 - s) * x0 + s * noise
            lr = stage.lr * min(1.0, (step + 1) / max(1, warmup_steps))  # linear warm-up
            for group in opt.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                pred = model(hidden_states=x_t, timestep=sigma * 1000.0, encoder_hidden_states=emb,
                             encoder_attention_mask=mask, pooled_projections=pooled,
                             guidance=guidance.expand(batch), return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
            window.append(loss.detach())
            step, s_step = step + 1, s_step + 1
            if len(window) == log_every:
                mean = float(torch.stack(window).mean())
                window = []
                log.steps.append(step)
                log.losses.append(mean)
                log.stage_of_step.append(s_idx)
                if progress is not None:
                    sizes = ", ".join(f"{f}x{h}x{w} batch {b}" for f, h, w, b in stage.sizes())
                    progress(f"stage {s_idx} ({sizes}) step {step}: loss {mean:.4f} "
                             f"({time.perf_counter() - t_start:.0f} s)")
    if window:
        log.steps.append(step)
        log.losses.append(float(torch.stack(window).mean()))
        log.stage_of_step.append(len(stages) - 1)
    log.seconds = time.perf_counter() - t_start
    ema.copy_to(model)
    model.eval().requires_grad_(False)
    return log


@torch.no_grad()
def sample(pipe: Any, captions: list[str], seeds: list[int], *, frames: int, height: int, width: int,
           steps: int, batch: int = 32, cfg: float | None = None, progress: bool = False) -> list:
    """Generate one video per (caption, seed) through the pipeline: a list of ``[F, H, W, 3]`` arrays in 0..1.
    ``cfg`` overrides the proxy's classifier-free guidance scale (1 = none)."""
    if len(captions) != len(seeds):
        raise ValueError(f"need one seed per caption, got {len(captions)} captions and {len(seeds)} seeds")
    pipe.set_progress_bar_config(disable=not progress)
    videos = []
    for i in range(0, len(captions), batch):
        chunk, chunk_seeds = captions[i:i + batch], seeds[i:i + batch]
        extra = proxy_call_kwargs(pipe, batch=len(chunk), true_cfg_scale=cfg)
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in chunk_seeds]
        out = pipe(prompt=chunk, num_frames=frames, height=height, width=width, num_inference_steps=steps,
                   generator=gens, output_type="np", **extra).frames
        videos.extend(list(out))
    return videos


def bucket(values: list[float], n: int = 10) -> list[float]:
    """Means of ``values`` over ``n`` equal windows (a short loss curve for logs)."""
    if not values:
        return []
    size = math.ceil(len(values) / n)
    return [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]
