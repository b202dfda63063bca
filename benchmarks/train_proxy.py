"""Train the proxy video model (one H200, one 10-minute command) and measure what it learned.

The proxy is a small diffusers ``HunyuanVideoTransformer3DModel`` trained here on procedural video (coloured
shapes on textured, panned backgrounds; ``xattn_video.proxy.data``). Its figures describe that model, never
HunyuanVideo's weights. In one run:

1. train from a fixed seed in two stages: 9x32x32 pixels (2,304 video tokens), then 17x64x64 (17,408 tokens);
   the loss curve is printed and saved;
2. pick the sampler settings (scheduler shift, classifier-free guidance) on *training* captions with new seeds;
3. caption following on the held-out captions (never seen in training) at both sizes;
4. attention concentration at 17,408 video tokens: per layer, the oracle share of key blocks that holds 90% of
   each query block's exact softmax mass (and, beside it, what XAttention's estimate keeps at tau = 0.9);
5. write the model folder (float16 transformer, ``xattn_video.proxy.model.save_proxy``) and ``train_proxy.json``.

    python benchmarks/train_proxy.py --out $OUT/proxy            # GPU, ~9 minutes
    python benchmarks/train_proxy.py --resume xattn_video/proxy/checkpoint --grow-single 5 --resume-seconds 390 \
        --out $OUT/proxy                                          # 5 more single blocks, then trained on
    python benchmarks/train_proxy.py --toy --out /tmp/proxy       # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from xattn_video.proxy.data import caption_split  # noqa: E402
from xattn_video.proxy.follow import follows_caption  # noqa: E402
from xattn_video.proxy.model import (  # noqa: E402
    ProxyInfo, ProxySize, deepen, load_proxy, proxy_components, proxy_pipeline, save_proxy,
)
from xattn_video.proxy.train import Stage, bucket, sample, train_proxy  # noqa: E402

SMALL = {"frames": 9, "height": 32, "width": 32}
LARGE = {"frames": 17, "height": 64, "width": 64}
TOY = {"frames": 5, "height": 16, "width": 16}


def follow_table(videos: list, captions: list[str]) -> dict[str, Any]:
    results = [follows_caption(v, c) for v, c in zip(videos, captions)]
    return {"rate": sum(r.followed for r in results) / len(results), "n": len(results),
            "per_caption": [{"caption": r.caption, "followed": r.followed, "along": round(r.along, 4),
                             "across": round(r.across, 4), "visible": round(r.visible_frames, 3)} for r in results]}


def set_shift(pipe: Any, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)


def concentration(pipe: Any, captions: list[str], size: dict, steps: int, cfg: float, block_size: int) -> dict:
    """Oracle 90%-mass block share per layer at ``size`` (and XAttention's tau=0.9 estimate density), over the
    steps after the first 10% (the usual dense warmup). A mask source sees every call's q and k; it returns
    every block, so the video is the dense one."""
    from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
    from xattn_video.block_mask import BlockSparseMask
    from xattn_video.estimate import dense_mask, estimate_mask
    from xattn_video.oracle import oracle_block_density

    per_layer: dict[int, list[float]] = {}
    estimate: dict[int, list[float]] = {}
    skip = max(1, steps // 10)

    def probe(req: Any) -> BlockSparseMask:
        q, k = req.q, req.k
        per_layer.setdefault(req.layer, []).append(
            float(oracle_block_density(q, k, block_size, 0.9, req.kv_len, q_end=req.global_start).mean()))
        m = estimate_mask(q, k, block_size=block_size, stride=16, threshold=0.9, kv_len=req.kv_len,
                          keep_diagonal=True, max_density=None, global_start=req.global_start,
                          backend="triton" if q.is_cuda else "reference")
        estimate.setdefault(req.layer, []).append(m.density())
        return dense_mask(q.shape[0], q.shape[2], req.kv_len, k.shape[2], block_size, q.device)

    config = XAttentionConfig(block_size=block_size, stride=16, threshold=0.9, warmup_steps=skip)
    apply_xattention(pipe, config, mask_source=probe)
    try:
        sample(pipe, captions, list(range(len(captions))), steps=steps, cfg=cfg, batch=1, **size)
    finally:
        remove_xattention(pipe)
    layers = sorted(per_layer)

    def mean(values: dict[int, list[float]]) -> float:
        return sum(sum(v) for v in values.values()) / sum(len(v) for v in values.values())

    return {
        "video_tokens": size["frames"] * size["height"] * size["width"] // 4,
        "block_size": block_size,
        "oracle_density_90_per_layer": [sum(per_layer[l]) / len(per_layer[l]) for l in layers],
        "oracle_density_90_mean": mean(per_layer),
        "xattn_tau09_density_per_layer": [sum(estimate[l]) / len(estimate[l]) for l in layers],
        "xattn_tau09_density_mean": mean(estimate),
        "prompts": captions,
        "steps_counted": f"{skip}..{steps - 1}",
    }


def held_out_follow(pipe: Any, held: list[str], small: dict, large: dict, steps: int, cfg: float) -> dict:
    """Caption following on the held-out captions: 2 seeds at the small size, 1 at the large (30 steps)."""
    follow = {}
    for name, sz, seeds, n_steps in (("small", small, 2, steps), ("large", large, 1, 30)):
        caps = [c for c in held for _ in range(seeds)]
        seed_list = [20_000 + i for i in range(len(caps))]
        t0 = time.perf_counter()
        vids = sample(pipe, caps, seed_list, steps=n_steps, cfg=cfg, **sz)
        follow[name] = {**sz, "steps": n_steps, "seconds": time.perf_counter() - t0, **follow_table(vids, caps)}
        print(f"held-out following at {sz}: {follow[name]['rate']:.2f} of {len(caps)}", flush=True)
    return follow


def evaluate(folder: str, out: Path, held: list[str], choices: list, small: dict, large: dict, steps: int,
             device: torch.device) -> int:
    """Held-out following of a saved proxy under every sampler setting (no training, no selection)."""
    pipe = load_proxy(folder).to(device)
    if device.type == "cuda":
        pipe.to(torch.bfloat16)
    rows = []
    for shift, cfg in choices:
        set_shift(pipe, shift)
        print(f"shift {shift}, cfg {cfg}:")
        rows.append({"shift": shift, "cfg": cfg, **held_out_follow(pipe, held, small, large, steps, cfg)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.json").write_text(json.dumps({"model": folder, "date": time.strftime("%Y-%m-%d"),
                                                   "command": " ".join(sys.argv), "samplers": rows}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder: the model folder and train_proxy.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small-seconds", type=float, default=290.0)
    ap.add_argument("--large-seconds", type=float, default=130.0)
    ap.add_argument("--resume", help="a saved proxy folder to continue training from (its weights, a fresh "
                    "optimizer); the stages become one stage alternating both sizes")
    ap.add_argument("--resume-seconds", type=float, default=440.0)
    ap.add_argument("--resume-sizes", choices=["both", "large"], default="both",
                    help="with --resume: alternate both sizes, or train the large size only (its following and "
                    "attention concentration are what the small size does not teach)")
    ap.add_argument("--grow-single", type=int, default=0,
                    help="with --resume: first add this many single-stream blocks (copies of the middle one whose "
                    "output starts at zero: the same function), then train")
    ap.add_argument("--evaluate", help="no training: held-out caption following of this saved proxy folder under "
                    "every sampler setting (shift x CFG), both sizes; writes OUT/evaluate.json")
    ap.add_argument("--toy", action="store_true", help="CPU smoke test: tiny sizes, a few steps")
    args = ap.parse_args(argv)

    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda" if torch.cuda.is_available() and not args.toy else "cpu")
    t_start = time.perf_counter()
    out = Path(args.out)
    train_captions, held_out = caption_split(seed=args.seed)
    if args.toy:
        size = ProxySize(heads=2, head_dim=32, double_blocks=1, single_blocks=1)
        stages = [Stage(batch=4, steps=6, **TOY), Stage(batch=2, steps=3, frames=5, height=32, width=32)]
        small, large, steps, block = TOY, {"frames": 5, "height": 32, "width": 32}, 3, 32
        val, held = train_captions[:2], held_out[:3]
        choices = [(1.0, 1.0), (3.0, 2.0)]
    else:
        size = ProxySize()
        stages = [Stage(batch=64, seconds=args.small_seconds, lr=5e-4, **SMALL),
                  Stage(batch=8, seconds=args.large_seconds, lr=2e-4, **LARGE)]
        small, large, steps, block = SMALL, LARGE, 20, 128
        val, held = train_captions[::7][:16], held_out
        choices = [(1.0, 1.0), (3.0, 1.0), (1.0, 3.0), (3.0, 3.0)]

    if args.evaluate:
        return evaluate(args.evaluate, out, held, choices, small, large, steps, device)
    if args.grow_single and not args.resume:
        ap.error("--grow-single needs --resume (it deepens a trained proxy)")
    previous = None
    if args.resume:
        pipe = load_proxy(args.resume)
        previous = pipe.xattn_proxy_info.training
        if args.grow_single:
            before = pipe.transformer.config.num_single_layers
            deepen(pipe.transformer, args.grow_single)
            previous = {**previous, "then_grown": {"single_blocks": before, "added": args.grow_single}}
            print(f"grown: {before} -> {pipe.transformer.config.num_single_layers} single blocks", flush=True)
        c = pipe.transformer.config
        size = ProxySize(c.num_attention_heads, c.attention_head_dim, c.num_layers, c.num_single_layers,
                         c.num_refiner_layers)
        s0, s1 = stages[0], stages[-1]
        first, also = (s1, ()) if args.resume_sizes == "large" else (s0, ((s1.frames, s1.height, s1.width, s1.batch),))
        stages = [Stage(frames=first.frames, height=first.height, width=first.width, batch=first.batch, lr=3e-4,
                        steps=None if not args.toy else 4, seconds=None if args.toy else args.resume_seconds,
                        also=also)]
    else:
        pipe = proxy_pipeline(proxy_components(seed=args.seed, size=size))
    pipe.to(device)
    log = train_proxy(pipe, stages, seed=args.seed + (1 if args.resume else 0),
                      warmup_steps=20 if args.resume else 100)
    print(f"trained in {log.seconds:.0f} s; loss curve (10 windows): "
          + ", ".join(f"{x:.4f}" for x in bucket(log.losses)))
    save_proxy(pipe, out / "model")  # first save: nothing is lost if the evaluation fails
    if device.type == "cuda":  # sample as users run it on a GPU
        pipe.to(torch.bfloat16)

    # sampler settings chosen on training captions (new seeds), never on the held-out ones
    picks = []
    for shift, cfg in choices:
        set_shift(pipe, shift)
        vids = sample(pipe, val, [10_000 + i for i in range(len(val))], steps=steps, cfg=cfg, **small)
        picks.append({"shift": shift, "cfg": cfg, "val_follow": follow_table(vids, val)["rate"]})
        print(f"validation: shift {shift}, cfg {cfg}: follows {picks[-1]['val_follow']:.2f}")
    best = max(picks, key=lambda p: (p["val_follow"], -p["cfg"], -p["shift"]))
    set_shift(pipe, best["shift"])

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
    report: dict[str, Any] = {"device": device_name,
                              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                              "provenance": "model trained here on procedural video; not HunyuanVideo's weights",
                              "params": sum(p.numel() for p in pipe.transformer.parameters()),
                              "size": vars(size), "stages": [vars(s) for s in stages],
                              "train": log.as_dict(), "sampler_choice": picks, "chosen": best}
    follow = held_out_follow(pipe, held, small, large, steps, best["cfg"])
    seen_vids = sample(pipe, val, [30_000 + i for i in range(len(val))], steps=steps, cfg=best["cfg"], **small)
    follow["seen_small"] = follow_table(seen_vids, val)
    report["follow"] = follow

    report["concentration"] = concentration(pipe, held[:2], large, 30, best["cfg"], block)
    c = report["concentration"]
    print(f"oracle 90%-mass density at {c['video_tokens']} video tokens: {c['oracle_density_90_mean']:.3f} "
          f"(per layer {[round(x, 3) for x in c['oracle_density_90_per_layer']]}); "
          f"XAttention tau=0.9 keeps {c['xattn_tau09_density_mean']:.3f}")

    pipe.to(torch.float32)
    info = ProxyInfo(
        true_cfg_scale=best["cfg"],
        defaults={"num_frames": small["frames"], "height": small["height"], "width": small["width"],
                  "num_inference_steps": steps},
        training={"seed": args.seed, "stages": [vars(s) for s in stages], "final_loss": log.losses[-1],
                  "seconds": log.seconds, "device": report["device"], "date": report["date"],
                  "continued_from": previous},
    )
    pipe.xattn_proxy_info = info
    save_proxy(pipe, out / "model")
    report["seconds_total"] = time.perf_counter() - t_start
    (out / "train_proxy.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'model'} and {out / 'train_proxy.json'} in {report['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
