r"""Quality benchmark on the proxy model: XAttention against the peers' sparse patterns at matched densities.

The model is the proxy (a small HunyuanVideo transformer trained here on procedural video; its figures are that
model's, never HunyuanVideo's). Held-out captions (never seen in training) x seeds are generated densely once
(the reference videos), then once per method and warmup, batched, through the same pipeline, runtime and
block-sparse kernel; only the block masks differ:

- XAttention as in the paper: tau 0.8 / 0.9 / 0.95 with stride 8 and 16, and tau 0.95 capped by
  ``max_density`` 0.3 / 0.15;
- the peers' patterns (``xattn_video.patterns``), each sized to the largest that stays within density 0.3 and
  0.15: a 3D sliding window (STA), SVG's per-head spatial-or-temporal choice by online profiling (its MSE
  criterion on 64 sampled queries), Radial attention's energy-decay mask, and random blocks (the floor);
- each with 0 / 10% / 20% of the steps dense;
- with ``--precisions``: the attention's and the estimate's arithmetic (native, int8 / fp8, fp8; FP8 needs a
  GPU, the CPU computes the same rounding in the reference);
- the quality levers (at the first warmup only), each at density 0.3 and 0.15: the 3D-tile token order, the
  sink-aware estimate, per-head thresholds calibrated on *training* captions for that density
  (``xattn_video.calibrate``; by kept mass and by output error), alone and with the sink-aware estimate; the
  one tau of the profile's grid that fits the density (the paper's method at a matched density); the residual
  (``residual``: what the masks leave out, measured at the last warmup step and added back), on the capped,
  calibrated and fitted rows; mask reuse for 2 / 3 / 4 steps; and the oracle: the capped rule on the exact
  block masses (the ceiling of any selection at that budget; it costs more than dense attention).

Per run: PSNR and SSIM of every video against its dense reference (mean over videos), the caption-following
rate, the density after warmup, the attention time per step (CUDA events around each attention call, the
mask's estimate or construction included) and the run's wall time. JSON after every run (a run cut short
keeps what finished), then a Markdown table and a Pareto plot (density -> PSNR).

    python benchmarks/bench_quality.py --out $OUT/quality           # GPU: 17 x 64 x 64 (17,408 tokens)
    python benchmarks/bench_quality.py --levers-only --warmups 0.1 --profiles DIR --out $OUT/levers
                                        # the levers beside plain XAttention, calibrating from saved profiles
    python benchmarks/bench_quality.py --precisions --warmups 0.1 --out $OUT/precision
                                        # capped XAttention and the calibrated preset in fp8 / int8 arithmetic
    python benchmarks/bench_quality.py --levers-only --only 'cap=0\.3' --out $OUT/q   # some methods only
    python benchmarks/bench_quality.py --toy --out /tmp/quality     # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video import XAttentionConfig, apply_xattention, remove_xattention  # noqa: E402
from xattn_video.metrics.fidelity import ssim_per_frame, video_psnr  # noqa: E402
from xattn_video.patterns import (SVG, Band, RandomSource, Radial, ScoredSource, StaticSource, SVGSource,  # noqa: E402
                                  Temporal, VideoLayout, Window3D, fit_density)
from xattn_video.proxy.data import caption_split  # noqa: E402
from xattn_video.proxy.follow import follows_caption  # noqa: E402
from xattn_video.proxy.train import sample  # noqa: E402

DENSITIES = (0.3, 0.15)


@dataclass
class Method:
    name: str
    family: str  # "xattention" or a peer's name: what the Pareto plot joins into one curve
    config: dict  # XAttentionConfig fields
    source: Callable | None = None
    target: float | None = None  # the density it was sized for (None: its own)
    note: str = ""
    params: dict = field(default_factory=dict)
    first_warmup_only: bool = False  # a lever: measured at the first warmup of the run order only


def build_methods(layout: VideoLayout, block: int, text: int, valid_text: int, toy: bool) -> list[Method]:
    fit = {"text_tokens": text, "valid_text_tokens": valid_text}
    methods: list[Method] = []
    for stride in (8, 16) if not toy else (8,):
        for tau in (0.8, 0.9, 0.95):
            methods.append(Method(f"XAttention tau={tau} S={stride}", "xattention",
                                  {"threshold": tau, "stride": stride}))
    for d in DENSITIES:
        methods.append(Method(f"XAttention tau=0.95 cap={d}", "xattention cap",
                              {"threshold": 0.95, "stride": 8 if toy else 16, "max_density": d}, target=d))
    peer_cfg = {"threshold": 0.5, "stride": 8}  # the source replaces the estimate; tau < 1 keeps the call sparse

    def sized(make: Callable[[int], Any], d: float, lo: int = 0, hi: int | None = None) -> tuple[int, str]:
        """The largest size within density ``d``, or the smallest one (said in a note) when none is."""
        try:
            return fit_density(make, layout, block, d, lo=lo, hi=hi, **fit)[0], ""
        except ValueError:
            return lo, "its smallest mask is denser than the target"

    for d in DENSITIES:
        r, note = sized(lambda r: Window3D((r, r, r)), d)
        methods.append(Method(f"STA window r={r} @{d}", "STA (3D window)", peer_cfg,
                              StaticSource(Window3D((r, r, r)), layout), d, note, {"radius": r}))
        (rb, nb), (rt, nt) = sized(Band, d), sized(Temporal, d)
        svg = SVG(Band(rb), Temporal(rt), samples=64 if not toy else 8, criterion="mse")
        methods.append(Method(f"SVG band {rb} / temporal {rt} @{d}", "SVG (spatial/temporal)", peer_cfg,
                              SVGSource(svg, layout), d, nb or nt, {"band": rb, "temporal": rt}))
        p, note = sized(lambda p: Radial(decay=p / 64), d, lo=1, hi=256)  # decay in steps of 1/64
        methods.append(Method(f"Radial decay={p / 64:.3f} @{d}", "Radial", peer_cfg,
                              StaticSource(Radial(decay=p / 64), layout), d, note, {"decay": p / 64}))
        methods.append(Method(f"random @{d}", "random", peer_cfg,
                              RandomSource.for_density(d, layout, block, seed=0, **fit), d))
    return methods


LEVERS = {"": {}, " +tile": {"token_order": "tile"}, " +sink": {"sink_aware": True},
          " +tile+sink": {"token_order": "tile", "sink_aware": True}, " +residual": {"residual": True}}
RESIDUAL = {"": {}, " +residual": LEVERS[" +residual"]}  # a schedule lever: any table or tau takes it unchanged


def calibrated_name(by: str, d: float, lever: str) -> str:
    return f"XAttention calibrated by {by} @{d}{lever}"


def fitted_name(d: float, lever: str) -> str:
    return f"XAttention tau fitted @{d}{lever}"


def build_lever_methods(pipe: Any, captions: list[str], size: dict, steps: int, warmup: int, block: int,
                        stride: int, out: Path, toy: bool, profiles: Path | None = None,
                        only: str | None = None) -> list[Method]:
    """The quality levers at each density: tile order and sink-aware scores on the capped estimate; per-head
    thresholds calibrated for the density (profiled on training captions, dense, at this size, or read from
    ``profiles``: an earlier run's folder) alone and with the sink-aware estimate; mask reuse. Writes each
    calibrated config and profile to ``out``. A variant none of whose calibrated rows ``only`` selects is not
    profiled (profiling costs more than a run)."""
    from xattn_video.calibrate import ThresholdProfile, ThresholdProfiler, choose_thresholds, summarise

    methods: list[Method] = []
    for d in DENSITIES:
        for name, lever in LEVERS.items():
            if name:
                methods.append(Method(f"XAttention tau=0.95 cap={d}{name}", "xattention cap" + name,
                                      {"threshold": 0.95, "stride": stride, "max_density": d, **lever},
                                      target=d, first_warmup_only=True))
    for name in ("", " +sink") if not toy else ("",):  # tile order did not help calibration (RESULTS.md)
        lever = LEVERS[name]
        names = [calibrated_name(by, d, name + extra) for d in DENSITIES for by in ("mass", "error")
                 for extra in RESIDUAL]
        names += [fitted_name(d, name + extra) for d in DENSITIES for extra in RESIDUAL]
        if only is not None and not any(re.search(only, n) for n in names):
            continue
        cfg = XAttentionConfig(block_size=block, stride=stride, warmup_steps=warmup, **lever)
        tag = name.replace(" +", "_")
        if profiles is not None:
            profile = ThresholdProfile.load(profiles / f"profile{tag}.json")
        else:
            # exact mass and output error on 32 evenly spaced query blocks per call: every block row (136
            # here) made profiling a 17,408-token, 11-layer model take longer than a 10-minute command
            profiler = ThresholdProfiler(query_blocks=None if toy else 32)
            run(pipe, captions, list(range(50_000, 50_000 + len(captions))), size, steps, len(captions), cfg,
                profiler)
            profile = profiler.profile
        profile.save(out / f"profile{tag}.json")
        for d in DENSITIES:
            for by in ("mass", "error"):
                table = choose_thresholds(profile, density=d, by=by)
                summary = summarise(profile, table)
                if by == "mass":
                    fitted = summary  # its single tau: the grid's most mass within the table's density
                cfg.replace(threshold=table).save(out / f"calibrated{tag}_{by}_{d}.yaml")
                print(f"calibrated by {by}{name} @{d}: profiled density {summary['density']:.3f}, mass "
                      f"{summary['mass']:.3f}, error {summary['error']:.3f} (single tau {summary['single_tau']}: "
                      f"{summary['single_tau_density']:.3f}, {summary['single_tau_mass']:.3f}, "
                      f"{summary['single_tau_error']:.3f})", flush=True)
                for extra, more in RESIDUAL.items():
                    methods.append(Method(calibrated_name(by, d, name + extra),
                                          f"xattention calibrated by {by}{name}{extra}",
                                          {"threshold": table, "stride": stride, **lever, **more}, target=d,
                                          params={"profile": summary}, first_warmup_only=True))
            # the paper's XAttention at this density: the one tau of the grid that keeps the most profiled mass
            # without exceeding the calibrated table's density (a cap is not the paper's method)
            tau = fitted["single_tau"]
            for extra, more in RESIDUAL.items():
                methods.append(Method(fitted_name(d, name + extra), f"xattention tau fitted{name}{extra}",
                                      {"threshold": tau, "stride": stride, **lever, **more}, target=d,
                                      params={"tau": tau, "profiled_density": fitted["single_tau_density"]},
                                      first_warmup_only=True))
    for reuse in (2, 3, 4):
        methods.append(Method(f"XAttention tau=0.95 cap=0.3 reuse={reuse}", "xattention cap reuse",
                              {"threshold": 0.95, "stride": stride, "max_density": 0.3, "mask_reuse_steps": reuse},
                              target=0.3, params={"mask_reuse_steps": reuse}, first_warmup_only=True))
    # residual renewed once mid-way: its refresh step is dense, so the cap of the other steps is lowered to keep
    # the mean density after the warmup at d
    sparse_steps = steps - warmup
    refresh = max(1, (sparse_steps - 1) // 2)
    n_refresh = sum(1 for s in range(warmup, steps) if (s - warmup + 1) % (refresh + 1) == 0)
    for d in DENSITIES:
        cap = (d * sparse_steps - n_refresh) / (sparse_steps - n_refresh)
        if warmup < 1 or cap <= 0:
            continue
        eight_bit = {"precision": "int8-fp8", "estimate_precision": "fp8"}
        for tag, arith in (("", {}), (" 8-bit", eight_bit),
                           (" 8-bit, fp8 residual", {**eight_bit, "residual_precision": "fp8"})):
            methods.append(Method(f"XAttention tau=0.95 cap={cap:.3f} +residual refresh={refresh} @{d}{tag}",
                                  "xattention cap +residual refresh" + tag,
                                  {"threshold": 0.95, "stride": stride, "max_density": round(cap, 4),
                                   "residual": True, "residual_refresh": refresh, **arith}, target=d,
                                  params={"residual_refresh": refresh, "cap": cap, **arith}, first_warmup_only=True))
    for d in DENSITIES:  # the ceiling of any selection at this budget: the capped rule on the true block masses
        methods.append(Method(f"oracle tau=0.95 cap={d}", "oracle (exact scores)",
                              {"threshold": 0.95, "stride": stride, "max_density": d}, ScoredSource("exact"),
                              target=d, first_warmup_only=True))
    return methods


PRECISIONS = (("native", "native"), ("int8-fp8", "native"), ("fp8", "native"), ("native", "fp8"),
              ("int8-fp8", "fp8"))  # (attention, estimate)


def build_precision_methods(stride: int) -> list[Method]:
    """Plain capped XAttention at each density and the preset ``proxy_64x64_calibrated_d030``, each with the
    attention's and the estimate's arithmetic in native, int8 / fp8 or fp8 (``OpConfig.precision``)."""
    from dataclasses import asdict

    from xattn_video.config import load_config

    preset = {k: v for k, v in asdict(load_config("proxy_64x64_calibrated_d030").op).items()
              if k not in ("block_size", "precision", "estimate_precision")}
    methods = []  # density 0.3 first in every arithmetic, then the preset, then 0.15 (a budget cuts the tail)
    for kind in ("cap 0.3", "preset", "cap 0.15"):
        for attention, estimate in PRECISIONS:
            arith = {"precision": attention, "estimate_precision": estimate}
            tag = f" attention {attention}, estimate {estimate}"
            if kind == "preset":
                methods.append(Method(f"preset proxy_64x64_calibrated_d030{tag}", "xattention calibrated precision",
                                      {**preset, **arith}, target=0.3, params=arith))
            else:
                d = float(kind.split()[1])
                methods.append(Method(f"XAttention tau=0.95 cap={d}{tag}", "xattention cap precision",
                                      {"threshold": 0.95, "stride": stride, "max_density": d, **arith}, target=d,
                                      params=arith))
    return methods


def run(pipe: Any, captions: list[str], seeds: list[int], size: dict, steps: int, batch: int,
        config: XAttentionConfig | None, source: Callable | None) -> tuple[list[np.ndarray], dict]:
    """One batched generation: videos and what the runtime recorded (density, attention time)."""
    runtime = apply_xattention(pipe, config, mask_source=source) if config is not None else None
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        videos = sample(pipe, captions, seeds, steps=steps, batch=batch, **size)
        wall = time.perf_counter() - t0
    finally:
        if runtime is not None:
            remove_xattention(pipe)
    stats: dict[str, Any] = {"wall_s": wall}
    if runtime is not None:
        calls = runtime.record.calls  # the last batch's run (the record describes the latest run)
        sparse = [c for c in calls if c.decision == "sparse"]
        sparse_steps = {c.step for c in sparse}
        stats.update(density=runtime.record.mean_density_after_warmup(),
                     attention_s_per_sparse_step=(sum(c.time_s for c in sparse) / len(sparse_steps)
                                                  if sparse_steps else None),
                     reasons=runtime.record.counts())
    return videos, stats


def judge(refs: list[np.ndarray], videos: list[np.ndarray], captions: list[str]) -> dict:
    psnr = [video_psnr(r, v) for r, v in zip(refs, videos)]
    ssim = [float(np.mean(ssim_per_frame(r, v))) for r, v in zip(refs, videos)]
    follow = [follows_caption(v, c).followed for v, c in zip(videos, captions)]
    finite = [p for p in psnr if math.isfinite(p)]
    return {"psnr": float(np.mean(finite)) if finite else math.inf, "psnr_min": float(min(psnr)),
            "ssim": float(np.mean(ssim)), "follow": float(np.mean(follow))}


def table(rows: list[dict]) -> str:
    lines = ["| method | warmup | density | PSNR dB | SSIM | follows | attention ms / step | run s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        att = r.get("attention_s_per_sparse_step")
        lines.append(f"| {r['method']} | {r['warmup']:.0%} | {r['density']:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['follow']:.2f} | {'–' if att is None else f'{att * 1000:.1f}'} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmups = sorted({r["warmup"] for r in rows})
    fig, axes = plt.subplots(1, len(warmups), figsize=(5 * len(warmups), 4), squeeze=False)
    for ax, w in zip(axes[0], warmups):
        for family in dict.fromkeys(r["family"] for r in rows):
            pts = sorted((r["density"], r["psnr"]) for r in rows if r["warmup"] == w and r["family"] == family)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=family)
        ax.set_title(f"{w:.0%} of steps dense")
        ax.set_xlabel("density (fraction of blocks computed)")
        ax.set_ylabel("PSNR vs dense (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Proxy model trained here on procedural video (not HunyuanVideo's weights)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="a proxy folder (default: the embedded proxy)")
    ap.add_argument("--prompts", type=int, default=16, help="held-out captions (>= 16)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmups", default="0.1,0,0.2", help="fractions of the steps run dense, in run order")
    ap.add_argument("--budget-s", type=float, default=470.0, help="stop starting new runs after this long")
    ap.add_argument("--no-levers", dest="levers", action="store_false",
                    help="skip the quality levers (tile order, sink-aware, calibrated thresholds, mask reuse)")
    ap.add_argument("--levers-only", action="store_true",
                    help="the plain capped XAttention rows and the quality levers only (no peers, no tau rows)")
    ap.add_argument("--profiles", type=Path, default=None,
                    help="calibrate from the profiles an earlier run saved in this folder (same model, size, "
                    "captions) instead of profiling again")
    ap.add_argument("--block-size", type=int, default=None, help="the masks' block size (default 128; --toy: 32)")
    ap.add_argument("--only", default=None, help="run only the methods whose name matches this regular expression")
    ap.add_argument("--precisions", action="store_true",
                    help="only capped XAttention and the calibrated preset, in each arithmetic (native, int8 / "
                    "fp8, fp8) of the attention and the estimate")
    ap.add_argument("--size", default=None,
                    help="frames x height x width in pixels, e.g. 9x32x32 (default 17x64x64; --toy: 5x32x32)")
    ap.add_argument("--fp8-linear", action="store_true",
                    help="every method with the transformer's linear layers in float8 (quantize_linears_fp8), "
                    "against the same bf16 dense reference, and a first row 'dense, float8 linears'")
    ap.add_argument("--toy", action="store_true", help="CPU smoke test: small video, few methods")
    args = ap.parse_args(argv)
    if args.size is not None:
        try:
            frames, height, width = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            ap.error(f"--size {args.size!r} is not FRAMESxHEIGHTxWIDTH, e.g. 9x32x32")

    from xattn_video.pipelines.hunyuan_video import load_pipeline

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.toy else "cpu")
    pipe = load_pipeline(args.model, device=device)
    size = {"frames": 5, "height": 32, "width": 32} if args.toy else {"frames": 17, "height": 64, "width": 64}
    if args.size is not None:
        size = {"frames": frames, "height": height, "width": width}
    block = args.block_size or (32 if args.toy else 128)
    steps = 3 if args.toy else args.steps
    layout = VideoLayout(size["frames"], size["height"] // 2, size["width"] // 2)
    _, held = caption_split()
    warmups = [float(x) for x in args.warmups.split(",")]
    if args.toy:
        args.prompts, args.seeds, warmups = 2, 1, [0.1]
    captions = [c for c in held[:args.prompts] for _ in range(args.seeds)]
    seeds = [40_000 + i for i in range(len(captions))]
    text = pipe.xattn_proxy_info.max_sequence_length
    valid_text = len(pipe.tokenizer(held[0]).input_ids)  # every caption has five words: the same length
    methods = build_methods(layout, block, text, valid_text, args.toy)
    if args.levers_only:
        methods = [m for m in methods if m.family == "xattention cap"]
    if args.toy:
        methods = [m for m in methods if "@0.3" in m.name or m.family == "xattention cap" or "0.9 " in m.name]
    if args.precisions:
        methods, args.levers = build_precision_methods(8 if args.toy else 16), False

    refs, dense_stats = run(pipe, captions, seeds, size, steps, len(captions), None, None)
    dense_follow = float(np.mean([follows_caption(v, c).followed for v, c in zip(refs, captions)]))
    meta = {"model": args.model or "embedded proxy", "provenance": pipe.xattn_proxy_info.provenance,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
            "size": size, "video_tokens": layout.num_tokens, "text_tokens": text, "valid_text_tokens": valid_text,
            "block_size": block, "steps": steps, "prompts": held[:args.prompts], "seeds_per_prompt": args.seeds,
            "dense": {**dense_stats, "follow": dense_follow}}
    if args.fp8_linear:  # after the reference: it stays the bf16 model's dense video
        from xattn_video import quantize_linears_fp8

        meta["fp8_linear_layers"] = quantize_linears_fp8(pipe.transformer)
        methods.insert(0, Method("dense, float8 linears", "dense float8 linears", {"threshold": 1.0}, target=1.0,
                                 first_warmup_only=True))
    for stride in (8, 16):  # untimed: kernel compilation and autotuning fall on no measured run
        run(pipe, captions, seeds, size, 2, len(captions), XAttentionConfig(block_size=block, stride=stride,
            threshold=0.9, warmup_steps=0), None)
    rows: list[dict] = []
    print(f"dense reference: {len(refs)} videos in {dense_stats['wall_s']:.1f} s, follows {dense_follow:.2f}")
    stopped = None
    if args.levers:
        train, _ = caption_split()
        levers = build_lever_methods(pipe, train[::17][:2 if args.toy else 4], size, steps,
                                     round(warmups[0] * steps), block, 8 if args.toy else 16, out, args.toy,
                                     args.profiles, args.only)
        if args.toy:  # one of each kind
            levers = [m for m in levers if m.name.endswith(("cap=0.3 +tile", "@0.3", "reuse=2"))]
        methods += levers
    if args.only:
        methods = [m for m in methods if re.search(args.only, m.name)]
        if not methods:
            ap.error(f"--only {args.only!r} matches no method")
    for w in warmups:
        for m in methods:
            if m.first_warmup_only and w != warmups[0]:
                continue
            if time.perf_counter() - t_start > args.budget_s:
                stopped = f"time budget {args.budget_s:.0f} s reached before {m.name} at warmup {w:.0%}"
                break
            if m.config.get("residual") and round(w * steps) < 1:
                print(f"skipped {m.name} at warmup {w:.0%}: the residual is measured at a dense warmup step")
                continue
            cfg = XAttentionConfig(block_size=block, warmup_steps=round(w * steps), **m.config)
            videos, stats = run(pipe, captions, seeds, size, steps, len(captions), cfg, m.source)
            row = {"method": m.name, "family": m.family, "warmup": w, "target_density": m.target,
                   "note": m.note, "params": m.params, **stats, **judge(refs, videos, captions)}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            (out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows, "stopped": stopped},
                                                         indent=1, default=str))
        if stopped:
            break
    meta["seconds_total"] = time.perf_counter() - t_start
    (out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows, "stopped": stopped}, indent=1,
                                                 default=str))
    (out / "quality.md").write_text(table(rows) + "\n")
    pareto_plot(rows, out / "quality_pareto.png")
    print(f"wrote {out / 'quality.json'}, quality.md, quality_pareto.png in {meta['seconds_total']:.0f} s"
          + (f"; {stopped}" if stopped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
