"""`xattn-video generate | compare | report`: text to video with XAttention from the command line.

Examples::

    xattn-video generate --prompt "a red circle moving right" --out out/   # embedded proxy model, CPU is fine
    xattn-video compare --prompt "a red fox" --model /models/HunyuanVideo --config hunyuan_720p_fast \\
        --frames 129 --height 720 --width 1280 --steps 50 --out out/fox
    xattn-video generate --prompt "a red fox" --model /models/Wan2.1-T2V-14B-Diffusers --out out/wan  # wan_720p
    xattn-video generate --prompt "a red fox" --model /models/Wan2.1-T2V-14B-Diffusers --config wan_720p_8bit \\
        --fp8-linear --compile --out out/wan8   # 8-bit attention, float8 linears, compiled blocks
    xattn-video report out/fox                                          # re-render report.md and plots
    xattn-video calibrate --model /models/HunyuanVideo --prompt "a red fox" --prompt "a city at night" \\
        --frames 129 --height 720 --width 1280 --steps 50 --query-blocks 32 --out fox_calibrated.yaml
    torchrun --nproc-per-node 2 -m xattn_video.cli generate --prompt "a red fox" --model /models/HunyuanVideo \
        --config hunyuan_720p_fast --frames 129 --height 720 --width 1280 --out out/fox2   # Ulysses, rank 0 writes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import XAttentionConfig, load_config, preset_names
from .extras import MissingExtraError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _positive(name: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name}={value} must be >= {minimum}")
        return value

    return parse


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"YAML file or preset ({', '.join(preset_names())}); "
                                    "default: proxy_cpu for the proxy, tiny_cpu for tiny, "
                                    "hunyuan_720p_quality for a HunyuanVideo folder, wan_720p for Wan, "
                                    "hunyuan15_720p for HunyuanVideo 1.5")
    p.add_argument("--model", help="local diffusers folder of a HunyuanVideoPipeline, WanPipeline (Wan 2.1, 2.2) "
                                   "or HunyuanVideo15Pipeline; 'proxy' (the default: a small model trained here "
                                   "on procedural video) or 'tiny' (random weights)")
    p.add_argument("--steps", type=_positive("--steps"), help="denoising steps")
    p.add_argument("--frames", type=_positive("--frames"), help="frames, 4k+1 (1, 5, ..., 129)")
    p.add_argument("--height", type=_positive("--height", 16), help="pixels, a multiple of 16")
    p.add_argument("--width", type=_positive("--width", 16), help="pixels, a multiple of 16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=_positive("--warmup", 0), help="override the config's warmup steps")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--fp8-linear", action="store_true", help="the transformer's linear layers in float8 "
                   "(quantize_linears_fp8; fp8 tensor cores: Ada, Hopper or newer); pays off with --compile")
    p.add_argument("--compile", action="store_true", help="compile the transformer's repeated blocks "
                   "(torch.compile, inductor); the first step pays for compiling")


def _fraction(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"{name}={value} is out of range: accepted (0, 1]")
        return value

    return parse


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xattn-video", description="Video generation with XAttention block-sparse attention.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in (("generate", "generate a video with XAttention"),
                            ("compare", "generate dense and sparse, report speedup and quality")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--prompt", required=True)
        _add_model_args(p)
        p.add_argument("--threshold", type=float, help="override the config's threshold, in (0, 1]")
        p.add_argument("--out", default="out", help="output folder (default: out)")
        p.add_argument("--fps", type=_positive("--fps"), default=8)
        if name == "compare":
            p.add_argument("--lpips-weights", help="local AlexNet weights for LPIPS (else LPIPS is reported "
                                                   "unavailable)")
            p.add_argument("--vbench-weights", help="local VBench weights folder for the model-based dimensions")
    c = sub.add_parser("calibrate", help="profile a few prompts dense; write per-layer, per-head thresholds")
    c.add_argument("--prompt", action="append", help="a prompt to profile (repeat for several; 2-4 like the "
                                                      "ones you will generate; default for the proxy: 2 of its "
                                                      "training captions)")
    _add_model_args(c)
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--mass", type=_fraction("--mass"),
                        help="per head, the lowest threshold whose blocks keep this share of the true attention "
                             "mass (default 0.95)")
    budget.add_argument("--density", type=_fraction("--density"),
                        help="instead: the thresholds that keep the most true mass (or, with --by error, give the "
                             "least output error) at this mean density")
    c.add_argument("--by", choices=("mass", "error"), default="mass",
                   help="what --density optimises: kept true mass (default) or relative output error")
    c.add_argument("--query-blocks", type=_positive("--query-blocks"),
                   help="query blocks per call whose exact attention is computed (default: all; 16-32 keep a "
                        "720p calibration affordable)")
    c.add_argument("--out", default="calibrated.yaml", help="the config to write (default: calibrated.yaml); "
                                                           "the profile goes beside it as .profile.json")
    r = sub.add_parser("report", help="re-render report.md and plots from DIR/report.json")
    r.add_argument("dir")
    return parser


def _settings(args: argparse.Namespace) -> tuple[XAttentionConfig, dict[str, Any]]:
    from .pipelines.hunyuan_video import check_video_size, model_defaults

    preset, defaults = model_defaults(args.model)
    config = load_config(args.config or preset)
    if getattr(args, "threshold", None) is not None:
        config = config.replace(threshold=args.threshold)
    if args.warmup is not None:
        config = config.replace(warmup_steps=args.warmup)
    sizes = {
        "num_frames": args.frames or defaults["num_frames"],
        "height": args.height or defaults["height"],
        "width": args.width or defaults["width"],
        "num_inference_steps": args.steps or defaults["num_inference_steps"],
    }
    check_video_size(sizes["num_frames"], sizes["height"], sizes["width"], names=("--frames", "--height", "--width"))
    return config, sizes


_OWN_GROUP = [False]  # this run joined the process group (torchrun), so it leaves it at the end


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _load(args: argparse.Namespace) -> tuple[Any, int]:
    """The pipeline, with Ulysses context parallelism over the ranks when run under torchrun; and the rank."""
    from .pipelines.hunyuan_video import load_pipeline, model_kind

    rank, world, device = 0, 1, args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .context_parallel import init_from_torchrun

        if model_kind(args.model) == "folder":
            from .pipelines.folders import folder_kind

            name = folder_kind(args.model).class_name
            if name != "HunyuanVideoPipeline":
                raise ValueError("torchrun (Ulysses context parallelism) runs HunyuanVideoPipeline folders only; "
                                 f"this folder holds a {name}: run it as one process")

        joined = not _dist_initialized()
        rank, world, device = init_from_torchrun(args.device)
        _OWN_GROUP[0] = joined
    pipe = load_pipeline(args.model, device=device)
    _speed_options(pipe, args)
    if world > 1:
        from .context_parallel import enable_context_parallel

        enable_context_parallel(pipe)
    return pipe, rank


def _speed_options(pipe: Any, args: argparse.Namespace) -> None:
    """``--fp8-linear``, then ``--compile`` (the compiled blocks trace the float8 layers), on every transformer of
    the pipeline (Wan 2.2 has two)."""
    transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    if args.fp8_linear:  # a GPU without fp8 tensor cores: a one-line ValueError from quantize_linears_fp8
        from .fp8_linear import quantize_linears_fp8

        count = sum(quantize_linears_fp8(t) for t in transformers)
        logging.getLogger(__name__).warning("%d linear layers in float8", count)
    if args.compile:
        for t in transformers:
            t.compile_repeated_blocks()


def _generate(args: argparse.Namespace) -> int:
    from .pipelines.hunyuan_video import model_name, timed_generate
    from .processors import apply_xattention
    from .report.schema import DensityReport, GenerateSummary
    from .video_io import write_mp4

    config, sizes = _settings(args)
    pipe, rank = _load(args)
    runtime = apply_xattention(pipe, config)
    gen = timed_generate(pipe, args.prompt, seed=args.seed, **sizes)
    if rank != 0:  # every rank made the same video; rank 0 writes it
        return 0
    out = Path(args.out)
    video_path = write_mp4(gen.video, out / "video.mp4", fps=args.fps)
    summary = GenerateSummary(
        prompt=args.prompt, seed=args.seed, model=model_name(pipe), **sizes, warmup_steps=config.warmup_steps,
        config=config.to_dict(), wall_time_s=gen.total_s, timing=gen.run_timing(),
        density=DensityReport.from_record(runtime.record, sizes["num_inference_steps"]), video=str(video_path),
    )
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    mean = summary.density.mean_sparse_steps
    print(f"wrote {video_path} and {out / 'summary.json'} ({gen.total_s:.1f} s, mean density after warmup "
          f"{'n/a' if mean is None else f'{mean:.3f}'})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .extras import require

    require("ssim", "plots", what="xattn-video compare")  # before a model is loaded or a video generated
    from .pipelines.hunyuan_video import compare

    config, sizes = _settings(args)
    pipe, rank = _load(args)
    result = compare(pipe, args.prompt, config, seed=args.seed, out_dir=args.out if rank == 0 else None,
                     lpips_weights=args.lpips_weights, vbench_weights=args.vbench_weights, **sizes)
    if rank != 0:
        return 0
    t = result.report["timing"]
    print(f"speedup end to end {t['speedup_end_to_end']:.2f}x, denoise {t['speedup_denoise']:.2f}x; "
          f"report in {Path(args.out) / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report.writer import render_report

    folder = Path(args.dir)
    if not (folder / "report.json").is_file():
        raise FileNotFoundError(f"{str(folder / 'report.json')!r} does not exist (run `xattn-video compare` first)")
    files = render_report(folder)
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import choose_thresholds, profile_thresholds, summarise
    from .pipelines.hunyuan_video import load_pipeline, model_kind

    prompts = args.prompt
    if not prompts and model_kind(args.model) != "proxy":  # a usage error, before the folder is looked at
        raise ValueError("--prompt is required for this model: give 2-4 prompts like the ones you will "
                         "generate (repeat --prompt)")
    config, sizes = _settings(args)
    if not prompts:
        from .proxy.data import caption_split

        seen = caption_split()[0]
        prompts = [seen[i * len(seen) // 2] for i in range(2)]
    pipe = load_pipeline(args.model, device=args.device)
    profile = profile_thresholds(pipe, prompts, config, seed=args.seed, query_blocks=args.query_blocks, **sizes)
    if args.by != "mass" and args.density is None:
        raise ValueError(f"--by {args.by} goes with --density (a mass budget is per head, by mass)")
    budget = {"density": args.density, "by": args.by} if args.density is not None else {"mass": args.mass or 0.95}
    table = choose_thresholds(profile, **budget)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config.replace(threshold=table).save(out)
    profile.save(out.with_suffix(".profile.json"))
    s = summarise(profile, table)
    print(f"wrote {out} and {out.with_suffix('.profile.json')}: on the profiled calls, mean density "
          f"{s['density']:.3f} keeping {s['mass']:.3f} of the true attention mass, output error {s['error']:.3f} "
          f"(one threshold for all, tau={s['single_tau']}: density {s['single_tau_density']:.3f}, mass "
          f"{s['single_tau_mass']:.3f}, error {s['single_tau_error']:.3f})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args = _build_parser().parse_args(argv)
        return {"generate": _generate, "compare": _compare, "calibrate": _calibrate,
                "report": _report}[args.command](args)
    except (_UsageError, ValueError, FileNotFoundError, MissingExtraError) as e:
        if os.environ.get("XATTN_VIDEO_DEBUG"):
            raise
        print(f"xattn-video: error: {e}", file=sys.stderr)
        return 2
    finally:
        if _OWN_GROUP[0]:  # torchrun: leave the process group this run joined
            _OWN_GROUP[0] = False
            if _dist_initialized():
                sys.modules["torch.distributed"].destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
