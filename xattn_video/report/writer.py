"""Writing the report of one dense-vs-XAttention comparison: ``report.json``, ``report.md`` and PNG plots.

``write_report(out_dir, report, dense_video, sparse_video)`` writes everything; ``render_report(out_dir)``
re-draws ``report.md`` and the PNGs from ``report.json`` alone (plus ``dense.mp4`` / ``sparse.mp4`` in
``out_dir``, if present, for the frame strip). Both render from the JSON text, so a re-render is identical.

Files: ``report.json`` (all numbers and the config), ``report.md`` (summary), ``density_heatmap.png``
(layer × step density), ``step_times.png`` (per-step time, dense vs sparse, warmup shaded), ``frames.png``
(rows dense / sparse / |difference| for up to 4 evenly spaced frames; only when both videos are available).

Non-finite numbers: strict JSON has no Infinity/NaN, so ``report.json`` stores them as the strings
``"inf"``, ``"-inf"`` and ``"nan"`` (PSNR of identical frames is ``"inf"``); ``load_report`` gives them back as
floats. Missing optional parts are rendered as "n/a", so older or partial report files still render.

The fields are those of ``schema.CompareReport`` (``REPORT_FIELDS``, in order):

- ``prompt`` (str): the text prompt. ``seed`` (int): generator seed, the same for both runs.
- ``model`` (str): model id or path. ``device`` (str): e.g. ``"cuda:0"``. ``dtype`` (str): e.g. ``"bfloat16"``.
- ``num_frames``, ``height``, ``width`` (int): video size. ``num_inference_steps`` (int): denoising steps.
- ``warmup_steps`` (int): leading steps run dense in the XAttention run.
- ``config`` (object): ``XAttentionConfig.to_dict()`` of the sparse run: ``{"op": {...}, "schedule": {...}}``.
- ``timing`` (object), times in seconds, wall clock (GPU synchronised):
    - ``dense`` / ``sparse``: ``total_s`` (end to end: text encoding, denoising, VAE decode), ``denoise_s``
      (all denoising steps), ``decode_s`` (VAE decode), ``step_s`` (list, one per step), ``attention_s``
      (optional list, attention time per step).
    - ``speedup_end_to_end`` = dense ``total_s`` / sparse ``total_s``; ``speedup_denoise`` = dense
      ``denoise_s`` / sparse ``denoise_s``; ``speedup_per_step`` (list) = dense / sparse ``step_s``.
    - ``warmup_step_indices`` (list of int): steps the sparse run computed densely.
- ``density`` (object, ``schema.DensityReport``, from the run record): fraction of attention blocks computed.
    - ``layers`` (list of str): attention layer names. ``per_step_layer`` (list per step of list per layer:
      float, 1.0 for a dense call (warmup, dense layer, ...); null only where the layer was not called).
      ``reasons`` (same shape: ``warmup``, ``estimated``, ``reused``, ...). ``mean_sparse_steps`` (float): mean
      over the steps after warmup. ``per_head``: per-head densities ``{step: {layer: [...]}}``.
- ``fidelity`` (object): ``xattn_video.metrics.fidelity_report(dense, sparse)``: ``identical``,
  ``max_abs_diff``, ``psnr`` {``per_frame``, ``mean``, ``video_psnr``, ``identical_frames``} (dB, "inf" when
  identical), ``ssim`` {``per_frame``, ``mean``}, ``lpips`` {``available``, ``per_frame``, ``mean`` | ``reason``}.
- ``vbench`` (object): ``{"dense": ..., "sparse": ...}``, each ``vbench_dimensions(video)``:
  ``{"computed": {dimension: score}, "skipped": {dimension: reason}}``.
- ``identical`` (bool): the sparse video equals the dense one pixel for pixel.

Example::

    from xattn_video.report import write_report, render_report
    paths = write_report("out/run1", report, dense_video=dense, sparse_video=sparse)
    paths["markdown"]            # Path("out/run1/report.md")
    render_report("out/run1")    # re-draw after editing the plotting code
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .schema import REPORT_FIELDS, CompareReport  # noqa: F401  (REPORT_FIELDS: re-exported)

# Row labels of the headline table in report.md (tests check each is present).
HEADLINE_FIELDS: List[str] = [
    "Speedup end to end", "Denoise speedup", "Mean density after warmup", "PSNR", "SSIM", "LPIPS", "Identical",
]
FILES = {
    "json": "report.json",
    "markdown": "report.md",
    "density_heatmap": "density_heatmap.png",
    "step_times": "step_times.png",
    "frames": "frames.png",
}
STRIP_FRAMES = 4

PathLike = Union[str, Path]


# ---------------------------------------------------------------- JSON with non-finite numbers
def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON types; non-finite floats become ``"inf"`` / ``"-inf"`` / ``"nan"``.

    Example::

        json_safe({"psnr": float("inf"), "x": np.float32(1.5)})   # {"psnr": "inf", "x": 1.5}
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensor
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"report value {obj!r} of type {type(obj).__name__} cannot be stored in JSON")


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _restore(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    return obj


def load_report(path: PathLike) -> Dict[str, Any]:
    """Read ``report.json`` (a file or the directory holding it); ``"inf"``/``"nan"`` strings become floats.

    Example::

        rep = load_report("out/run1"); rep["fidelity"]["psnr"]["mean"]   # inf when identical
    """
    p = Path(path)
    if p.is_dir():
        p = p / FILES["json"]
    if not p.is_file():
        raise FileNotFoundError(f"no report.json at {p}")
    return _restore(json.loads(p.read_text()))


# ---------------------------------------------------------------- small helpers
def _num(x: Any) -> Optional[float]:
    """A number from the report, or None when absent / not numeric."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    return None


def _fmt(x: Any, spec: str = ".3f", unit: str = "") -> str:
    v = _num(x)
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    return f"{v:{spec}}{unit}"


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _floats(seq: Any, where: str) -> Optional[List[float]]:
    if seq is None:
        return None
    if not isinstance(seq, (list, tuple)):
        raise ValueError(f"{where} is {type(seq).__name__}; expected a list of numbers")
    out = []
    for i, v in enumerate(seq):
        f = _num(v)
        if f is None:
            raise ValueError(f"{where}[{i}] = {v!r}; expected a number")
        out.append(f)
    return out


def _warmup_indices(rep: Mapping[str, Any], n_steps: int) -> List[int]:
    idx = _get(rep, "timing", "warmup_step_indices")
    if idx is None:
        w = rep.get("warmup_steps")
        idx = list(range(min(int(w), n_steps))) if isinstance(w, int) and not isinstance(w, bool) else []
    return sorted(int(i) for i in idx)


def _density_matrix(rep: Mapping[str, Any]) -> Tuple[List[str], Optional[np.ndarray]]:
    """``[steps, layers]`` float array, NaN where null; validates row lengths."""
    dens = rep.get("density")
    if not isinstance(dens, Mapping) or dens.get("per_step_layer") is None:
        return [], None
    rows = dens["per_step_layer"]
    layers = [str(x) for x in (dens.get("layers") or [])]
    if not isinstance(rows, (list, tuple)) or not rows:
        return layers, None
    width = len(layers) if layers else len(rows[0])
    mat = np.full((len(rows), width), np.nan)
    for s, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            n = len(row) if isinstance(row, (list, tuple)) else type(row).__name__
            raise ValueError(f"density.per_step_layer[{s}] has {n} entries; expected {width} (one per layer)")
        for j, v in enumerate(row):
            f = _num(v)
            if v is not None and f is None:
                raise ValueError(f"density.per_step_layer[{s}][{j}] = {v!r}; expected a number or null")
            if f is not None:
                if not (0.0 <= f <= 1.0):
                    raise ValueError(f"density.per_step_layer[{s}][{j}] = {f}; a density must be in [0, 1]")
                mat[s, j] = f
    return layers or [str(j) for j in range(width)], mat


def _speedup(rep: Mapping[str, Any], key: str, time_key: str) -> Tuple[Optional[float], str]:
    dense_t = _num(_get(rep, "timing", "dense", time_key))
    sparse_t = _num(_get(rep, "timing", "sparse", time_key))
    s = _num(_get(rep, "timing", key))
    if s is None and dense_t is not None and sparse_t:
        s = dense_t / sparse_t
    detail = f" (dense {_fmt(dense_t, '.2f')} s → sparse {_fmt(sparse_t, '.2f')} s)" if dense_t or sparse_t else ""
    return s, detail


# ---------------------------------------------------------------- markdown
def _metric_cell(fid: Any, name: str, spec: str, unit: str) -> str:
    if not isinstance(fid, Mapping):
        return "n/a (not computed)"
    if fid.get("identical") is True:
        return "identical"
    part = fid.get(name)
    if not isinstance(part, Mapping):
        return "n/a (not computed)"
    if name == "lpips" and part.get("available") is False:
        # a "|" in the reason would split the Markdown table cell
        return "unavailable: " + str(part.get("reason", "no reason given")).replace("|", "\\|")
    pf = part.get("per_frame") or []
    rng = ""
    nums = [v for v in (_num(x) for x in pf) if v is not None and math.isfinite(v)]
    if nums:
        rng = f" (frames {min(nums):{spec}}–{max(nums):{spec}})"
    extra = ""
    if name == "psnr":
        extra = f"; whole clip {_fmt(part.get('video_psnr'), spec, unit)}"
        if part.get("identical_frames"):
            extra += f"; {part['identical_frames']} identical frame(s)"
    return f"{_fmt(part.get('mean'), spec, unit)} mean{rng}{extra}"


def _markdown(rep: Mapping[str, Any], drawn: Mapping[str, Optional[str]]) -> str:
    L: List[str] = []
    title = rep.get("model") or "unknown model"
    L.append(f"# XAttention vs dense attention — {title}\n")
    L.append(f"**Prompt:** {rep.get('prompt', 'n/a')}\n")
    size = f"{rep.get('num_frames', '?')} frames × {rep.get('height', '?')}×{rep.get('width', '?')}"
    L.append(
        f"seed {rep.get('seed', 'n/a')} · {size} · {rep.get('num_inference_steps', 'n/a')} steps "
        f"({rep.get('warmup_steps', 'n/a')} dense warmup) · device {rep.get('device', 'n/a')} · "
        f"dtype {rep.get('dtype', 'n/a')}\n"
    )

    # headline
    e2e, e2e_d = _speedup(rep, "speedup_end_to_end", "total_s")
    den, den_d = _speedup(rep, "speedup_denoise", "denoise_s")
    # the run record's one definition (RunRecord.mean_density_after_warmup), never recomputed here
    mdens = _num(_get(rep, "density", "mean_sparse_steps"))
    fid = rep.get("fidelity")
    identical = rep.get("identical")
    L.append("## Headline\n")
    L.append("| metric | value |\n|---|---|")
    L.append(f"| {HEADLINE_FIELDS[0]} | {_fmt(e2e, '.2f', '×')}{e2e_d} |")
    L.append(f"| {HEADLINE_FIELDS[1]} | {_fmt(den, '.2f', '×')}{den_d} |")
    dens_txt = "n/a (no density recorded)" if mdens is None else f"{mdens:.3f} ({100 * mdens:.1f} % of blocks computed)"
    L.append(f"| {HEADLINE_FIELDS[2]} | {dens_txt} |")
    L.append(f"| {HEADLINE_FIELDS[3]} | {_metric_cell(fid, 'psnr', '.2f', ' dB')} |")
    L.append(f"| {HEADLINE_FIELDS[4]} | {_metric_cell(fid, 'ssim', '.4f', '')} |")
    L.append(f"| {HEADLINE_FIELDS[5]} | {_metric_cell(fid, 'lpips', '.4f', '')} |")
    ident_txt = "n/a" if identical is None else ("yes: the sparse video equals the dense one" if identical else "no")
    L.append(f"| {HEADLINE_FIELDS[6]} | {ident_txt} |\n")

    # per-step table
    timing = rep.get("timing") if isinstance(rep.get("timing"), Mapping) else {}
    d_steps = _floats(_get(timing, "dense", "step_s"), "timing.dense.step_s")
    s_steps = _floats(_get(timing, "sparse", "step_s"), "timing.sparse.step_s")
    d_att = _floats(_get(timing, "dense", "attention_s"), "timing.dense.attention_s")
    s_att = _floats(_get(timing, "sparse", "attention_s"), "timing.sparse.attention_s")
    L.append("## Per-step time\n")
    n = max(len(d_steps or []), len(s_steps or []))
    if n == 0:
        L.append("No per-step times recorded.\n")
    else:
        warm = set(_warmup_indices(rep, n))
        _, mat = _density_matrix(rep)
        has_att = d_att is not None or s_att is not None
        head = "| step | phase | dense (s) | sparse (s) | speedup |"
        sep = "|---|---|---|---|---|"
        if has_att:
            head += " dense attn (s) | sparse attn (s) |"
            sep += "---|---|"
        if mat is not None:
            head += " mean density |"
            sep += "---|"
        L += [head, sep]
        for i in range(n):
            d = d_steps[i] if d_steps and i < len(d_steps) else None
            s = s_steps[i] if s_steps and i < len(s_steps) else None
            row = f"| {i} | {'warmup (dense)' if i in warm else 'sparse'} | {_fmt(d)} | {_fmt(s)} | "
            row += f"{_fmt(d / s if d is not None and s else None, '.2f', '×')} |"
            if has_att:
                da = d_att[i] if d_att and i < len(d_att) else None
                sa = s_att[i] if s_att and i < len(s_att) else None
                row += f" {_fmt(da)} | {_fmt(sa)} |"
            if mat is not None:
                vals = mat[i][~np.isnan(mat[i])] if i < mat.shape[0] else np.array([])
                row += f" {_fmt(float(vals.mean()) if vals.size else None)} |"
            L.append(row)
        L.append("")
        for key, label in (("total_s", "total"), ("denoise_s", "denoise"), ("decode_s", "VAE decode")):
            dv, sv = _num(_get(timing, "dense", key)), _num(_get(timing, "sparse", key))
            L.append(f"- {label}: dense {_fmt(dv, '.2f', ' s')}, sparse {_fmt(sv, '.2f', ' s')}")
        L.append("")
    if drawn.get("step_times"):
        L.append(f"![per-step time]({FILES['step_times']})\n")

    # density
    L.append("## Density\n")
    if drawn.get("density_heatmap"):
        L.append(f"![density, layer × step]({FILES['density_heatmap']})\n")
        L.append("Dense calls (warmup, dense layers) are 1.0; grey cells: layer not called at that step.")
        if _get(rep, "density", "per_head") is not None:
            L.append(" Per-head densities are in report.json (`density.per_head`).")
        L.append("")
    else:
        L.append("No per-layer density recorded.\n")

    # frames
    L.append("## Frames\n")
    L.append(f"![dense / sparse / difference]({FILES['frames']})\n" if drawn.get("frames")
             else f"Frame strip not drawn: {drawn.get('frames_note') or 'no videos'}.\n")

    # vbench
    L.append("## VBench dimensions\n")
    vb = rep.get("vbench")
    if not isinstance(vb, Mapping) or not vb:
        L.append("Not computed.\n")
    else:
        runs = [r for r in ("dense", "sparse") if isinstance(vb.get(r), Mapping)]
        names: List[str] = []
        for r in runs:
            for part in ("computed", "skipped"):
                for k in (vb[r].get(part) or {}):
                    if k not in names:
                        names.append(k)
        L.append("| dimension | " + " | ".join(runs) + " |")
        L.append("|---|" + "---|" * len(runs))
        skipped_rows = []
        for k in names:
            cells, reasons = [], []
            for r in runs:
                comp, skip = vb[r].get("computed") or {}, vb[r].get("skipped") or {}
                if k in comp:
                    cells.append(_fmt(comp[k], ".4f"))
                else:
                    cells.append("skipped")
                    reasons.append(f"{r}: {skip.get(k, 'not computed')}")
            L.append(f"| {k} | " + " | ".join(cells) + " |")
            if reasons:
                uniq = {x.split(': ', 1)[1] for x in reasons}
                skipped_rows.append(f"- {k}: " + (uniq.pop() if len(uniq) == 1 else "; ".join(reasons)))
        L.append("")
        if skipped_rows:
            L.append("Skipped:\n")
            L += skipped_rows
            L.append("")

    # config
    L.append("## XAttention config\n")
    cfg = rep.get("config")
    if isinstance(cfg, Mapping) and cfg:
        L.append("| key | value |\n|---|---|")
        for k, v in _config_rows(cfg):
            L.append(f"| {k} | `{json.dumps(v)}` |")
        L.append("")
    else:
        L.append("Not recorded.\n")
    L.append("All numbers: `report.json`.\n")
    return "\n".join(L)


def _config_rows(cfg: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    """``op.threshold``-style rows for the ``op`` / ``schedule`` sections; flat keys (older reports) as they are."""
    rows: List[Tuple[str, Any]] = []
    for k, v in cfg.items():
        if k in ("op", "schedule") and isinstance(v, Mapping):
            rows += [(f"{k}.{name}", value) for name, value in v.items()]
        else:
            rows.append((k, v))
    return rows


# ---------------------------------------------------------------- plots (matplotlib, no pyplot: no global backend)
def _figure(figsize: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_density(rep: Mapping[str, Any], path: Path) -> bool:
    layers, mat = _density_matrix(rep)
    if mat is None:
        return False
    import matplotlib

    n_steps, n_layers = mat.shape
    fig = _figure((max(6.0, 0.25 * n_steps + 3), max(4.0, 0.16 * n_layers + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(mat.T), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0,
                   interpolation="nearest", origin="upper")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer")
    stride = max(1, math.ceil(n_layers / 40))  # keep layer labels legible for 60-layer models
    ax.set_yticks(range(0, n_layers, stride))
    ax.set_yticklabels([layers[j] for j in range(0, n_layers, stride)], fontsize=6)
    ax.set_xticks(range(0, n_steps, max(1, math.ceil(n_steps / 25))))
    ax.set_title("Attention density: fraction of blocks computed\n(1 = dense; grey = not recorded)", fontsize=10)
    fig.colorbar(im, ax=ax, label="density")
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_step_times(rep: Mapping[str, Any], path: Path) -> bool:
    d = _floats(_get(rep, "timing", "dense", "step_s"), "timing.dense.step_s")
    s = _floats(_get(rep, "timing", "sparse", "step_s"), "timing.sparse.step_s")
    if not d and not s:
        return False
    n = max(len(d or []), len(s or []))
    fig = _figure((8.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for k, i in enumerate(_warmup_indices(rep, n)):
        ax.axvspan(i - 0.5, i + 0.5, color="orange", alpha=0.2, lw=0, label="warmup (dense)" if k == 0 else None)
    if d:
        ax.plot(range(len(d)), d, "o-", label="dense step")
    if s:
        ax.plot(range(len(s)), s, "s-", label="XAttention step")
    for run, style in (("dense", "C0--"), ("sparse", "C1--")):
        a = _floats(_get(rep, "timing", run, "attention_s"), f"timing.{run}.attention_s")
        if a:
            ax.plot(range(len(a)), a, style, label=f"{run} attention")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title("Per-step time, dense vs XAttention")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _plot_frames(dense: np.ndarray, sparse: np.ndarray, idx: Sequence[int], path: Path) -> None:
    n = len(idx)
    h, w = dense.shape[1:3]
    diffs = [np.abs(dense[k].astype(np.float32) - sparse[k].astype(np.float32)).max(axis=-1) for k in range(n)]
    vmax = max(float(x.max()) for x in diffs) or 1.0 / 255.0  # all-zero difference: keep a valid colour scale
    panel_w = 3.0
    fig = _figure((panel_w * n + 1.2, 3 * panel_w * h / w + 0.8))
    axes = fig.subplots(3, n, squeeze=False)
    for c in range(n):
        diff_label = f"|dense − sparse|, max over RGB\n(colour scale 0 … {vmax:.3f})"
        for r, (img, label) in enumerate(((dense[c], "dense"), (sparse[c], "XAttention"), (diffs[c], diff_label))):
            ax = axes[r][c]
            if r < 2:
                ax.imshow(np.clip(img, 0, 1))
            else:
                ax.imshow(img, cmap="magma", vmin=0.0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(f"frame {idx[c]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def _strip_indices(num_frames: int, k: int = STRIP_FRAMES) -> List[int]:
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, min(k, num_frames))})


def _read_frames(path: Path, want: Optional[Sequence[int]] = None) -> Tuple[int, List[np.ndarray], List[int]]:
    """Frame count and the frames at ``want`` (default: the strip's indices) as float in [0, 1]."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path)) as reader:
        try:
            count = int(reader.count_frames())
        except Exception:  # some readers cannot count without decoding: decode once
            count = sum(1 for _ in reader)
        idx = list(want) if want is not None else _strip_indices(count)
        frames = [np.asarray(reader.get_data(i), dtype=np.float32)[..., :3] / 255.0 for i in idx]
    return count, frames, idx


def _frames_from(
    out_dir: Path, dense_video: Any, sparse_video: Any
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], List[int], str]:
    from ..metrics.fidelity import to_float_video

    if dense_video is not None and sparse_video is not None:
        ds, ss = tuple(np.shape(dense_video)), tuple(np.shape(sparse_video))
        if ds != ss:
            raise ValueError(f"dense_video shape {ds} != sparse_video shape {ss}")
        if len(ds) != 4 or ds[0] < 1:
            raise ValueError(f"dense_video has shape {ds}; expected [F, H, W, 3]")
        idx = _strip_indices(ds[0])
        # convert only the strip's frames: a 720p clip in float would be gigabytes
        d = to_float_video(dense_video[idx], "dense_video")
        s = to_float_video(sparse_video[idx], "sparse_video")
        return d, s, idx, ""
    if (dense_video is None) != (sparse_video is None):
        return None, None, [], "only one of dense_video / sparse_video was given"
    dp, sp = out_dir / "dense.mp4", out_dir / "sparse.mp4"
    if not (dp.is_file() and sp.is_file()):
        return None, None, [], f"dense.mp4 and sparse.mp4 not both found in {out_dir}"
    n_d, d, idx = _read_frames(dp)
    n_s, _, _ = _read_frames(sp, want=[])
    if n_d != n_s:
        return None, None, [], f"dense.mp4 has {n_d} frames but sparse.mp4 has {n_s}"
    _, s, _ = _read_frames(sp, want=idx)
    if d[0].shape != s[0].shape:
        return None, None, [], f"frame sizes differ: dense {d[0].shape}, sparse {s[0].shape}"
    return np.stack(d), np.stack(s), idx, ""


def _render(out_dir: Path, rep: Dict[str, Any], dense_video: Any, sparse_video: Any) -> Dict[str, Path]:
    paths: Dict[str, Path] = {"json": out_dir / FILES["json"]}
    drawn: Dict[str, Optional[str]] = {}
    for key, fn in (("density_heatmap", _plot_density), ("step_times", _plot_step_times)):
        p = out_dir / FILES[key]
        if fn(rep, p):
            paths[key] = p
            drawn[key] = FILES[key]
        elif p.exists():
            p.unlink()  # a plot left from an earlier run would not match this report
    d, s, idx, note = _frames_from(out_dir, dense_video, sparse_video)
    fp = out_dir / FILES["frames"]
    if d is not None:
        _plot_frames(d, s, idx, fp)
        paths["frames"] = fp
        drawn["frames"] = FILES["frames"]
    else:
        drawn["frames_note"] = note
        if fp.exists():
            fp.unlink()
    md = out_dir / FILES["markdown"]
    md.write_text(_markdown(rep, drawn))
    paths["markdown"] = md
    return paths


# ---------------------------------------------------------------- public entry points
def write_report(
    out_dir: PathLike, report: Union[CompareReport, Mapping[str, Any]], dense_video: Any = None,
    sparse_video: Any = None,
) -> Dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNGs into ``out_dir``; return ``{kind: path}``.

    ``report``: a ``CompareReport``, or its dict form (missing optional parts render as "n/a").
    ``dense_video`` / ``sparse_video`` (``[F, H, W, 3]``, float 0..1 or uint8) feed the frame strip; without
    them, ``dense.mp4`` / ``sparse.mp4`` in ``out_dir`` are used if present. Keys of the result: ``json``,
    ``markdown``, and those of the plots drawn (``density_heatmap``, ``step_times``, ``frames``).

    Example::

        paths = write_report("out/run1", report, dense_video=dense, sparse_video=sparse)
    """
    if isinstance(report, CompareReport):
        report = report.to_dict()
    if not isinstance(report, Mapping):
        raise ValueError(f"report is {type(report).__name__}; expected a CompareReport or a dict (see REPORT_FIELDS)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    rep = _restore(json.loads(text))  # render exactly what is stored, so render_report reproduces it
    _density_matrix(rep)  # validate before anything is written
    (out / FILES["json"]).write_text(text + "\n")
    return _render(out, rep, dense_video, sparse_video)


def render_report(out_dir: PathLike) -> Dict[str, Path]:
    """Re-draw ``report.md`` and the PNGs in ``out_dir`` from its ``report.json`` (and dense/sparse .mp4).

    Example::

        render_report("out/run1")["markdown"]   # Path("out/run1/report.md")
    """
    out = Path(out_dir)
    return _render(out, load_report(out), None, None)
