"""report.json / report.md / PNG writer on a synthetic report dict."""

import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest

from xattn_video import XAttentionConfig
from xattn_video.metrics import fidelity_report, vbench_dimensions
from xattn_video.report import (
    FILES,
    HEADLINE_FIELDS,
    REPORT_FIELDS,
    CompareReport,
    json_safe,
    load_report,
    render_report,
    write_report,
)

STEPS, WARMUP, LAYERS = 6, 2, ["double.0", "double.1", "single.0"]


def _videos(f=5, h=32, w=48):
    rng = np.random.default_rng(0)
    dense = rng.random((f, h, w, 3)).astype(np.float32) * 0.8 + 0.1
    sparse = np.clip(dense + rng.normal(0, 0.02, dense.shape), 0, 1).astype(np.float32)
    return dense, sparse


def _report(dense, sparse, identical=False):
    # dense (warmup) calls are recorded as 1.0; None only where a layer was not called
    per_step = [[1.0] * len(LAYERS) if s < WARMUP else [0.3, 0.5, None] for s in range(STEPS)]
    reasons = [["warmup"] * len(LAYERS) if s < WARMUP else ["estimated", "estimated", None] for s in range(STEPS)]
    d_steps = [1.0] * STEPS
    s_steps = [1.0] * WARMUP + [0.5] * (STEPS - WARMUP)
    return {
        "prompt": "a cat walks on the grass",
        "seed": 42,
        "model": "tiny-random-hunyuan",
        "device": "cpu",
        "dtype": "float32",
        "num_frames": dense.shape[0],
        "height": dense.shape[1],
        "width": dense.shape[2],
        "num_inference_steps": STEPS,
        "warmup_steps": WARMUP,
        "config": XAttentionConfig(block_size=32, stride=8, threshold=0.9, warmup_steps=WARMUP).to_dict(),
        "timing": {
            "dense": {"total_s": 7.0, "denoise_s": 6.0, "decode_s": 0.8, "step_s": d_steps,
                      "attention_s": [0.6] * STEPS},
            "sparse": {"total_s": 5.0, "denoise_s": 4.0, "decode_s": 0.8, "step_s": s_steps},
            "speedup_end_to_end": 7.0 / 5.0,
            "speedup_denoise": 6.0 / 4.0,
            "speedup_per_step": [d / s for d, s in zip(d_steps, s_steps)],
            "warmup_step_indices": list(range(WARMUP)),
        },
        "density": {"layers": LAYERS, "per_step_layer": per_step, "reasons": reasons, "mean_sparse_steps": 0.4},
        "fidelity": fidelity_report(dense, sparse),
        "vbench": {"dense": vbench_dimensions(dense), "sparse": vbench_dimensions(sparse)},
        "identical": identical,
    }


def _valid_png(path):
    img = imageio.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    return img


def test_fixture_is_a_valid_compare_report(tmp_path):
    dense, sparse = _videos()
    rep = _report(dense, sparse)
    typed = CompareReport.from_dict(rep)
    assert typed.density.per_step_layer[0] == [1.0] * len(LAYERS)
    paths = write_report(tmp_path, typed, dense_video=dense, sparse_video=sparse)  # the typed form writes too
    assert list(json.loads(paths["json"].read_text())) == REPORT_FIELDS
    with pytest.raises(ValueError, match=r"report lacks \['identical'\]"):
        CompareReport.from_dict({k: v for k, v in rep.items() if k != "identical"})


def test_write_report_files_parse_and_headline(tmp_path, monkeypatch):
    monkeypatch.delenv("XATTN_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("XATTN_VBENCH_WEIGHTS", raising=False)
    dense, sparse = _videos()
    rep = _report(dense, sparse)
    paths = write_report(tmp_path, rep, dense_video=dense, sparse_video=sparse)
    assert set(paths) == {"json", "markdown", "density_heatmap", "step_times", "frames"}
    data = json.loads(paths["json"].read_text())
    assert list(data) == REPORT_FIELDS
    assert data["timing"]["speedup_denoise"] == pytest.approx(1.5)
    md = paths["markdown"].read_text()
    for label in HEADLINE_FIELDS:
        assert f"| {label} |" in md
    assert "1.40×" in md and "1.50×" in md and "0.400" in md
    assert f"{rep['fidelity']['psnr']['mean']:.2f} dB" in md
    assert f"{rep['fidelity']['ssim']['mean']:.4f}" in md
    assert "unavailable: no AlexNet weights" in md
    assert md.count("warmup (dense)") == WARMUP
    assert "temporal_flickering" in md and "aesthetic_quality" in md and "not installed" in md
    assert "| op.threshold | `0.9` |" in md and "| schedule.warmup_steps | `2` |" in md
    for key in ("density_heatmap", "step_times", "frames"):
        _valid_png(paths[key])


def test_identical_videos_store_inf_as_string(tmp_path):
    dense, _ = _videos()
    rep = _report(dense, dense.copy(), identical=True)
    paths = write_report(tmp_path, rep, dense_video=dense, sparse_video=dense)
    text = paths["json"].read_text()
    data = json.loads(text)  # strict JSON: no Infinity token
    assert "Infinity" not in text
    assert data["fidelity"]["psnr"]["mean"] == "inf" and data["fidelity"]["identical"] is True
    assert math.isinf(load_report(tmp_path)["fidelity"]["psnr"]["mean"])
    md = paths["markdown"].read_text()
    assert "| PSNR | identical |" in md and "| SSIM | identical |" in md


def test_render_report_reproduces_from_json_and_mp4(tmp_path):
    dense, sparse = _videos(f=6, h=32, w=48)
    rep = _report(dense, sparse)
    first = write_report(tmp_path, rep)  # no videos and no mp4s: strip skipped with a note
    assert "frames" not in first
    md1 = first["markdown"].read_text()
    assert "Frame strip not drawn" in md1
    for name, video in (("dense.mp4", dense), ("sparse.mp4", sparse)):
        imageio.mimwrite(tmp_path / name, list((video * 255).round().astype(np.uint8)), fps=8, macro_block_size=1)
    again = render_report(tmp_path)
    assert set(again) == {"json", "markdown", "density_heatmap", "step_times", "frames"}
    _valid_png(again["frames"])
    md2 = again["markdown"].read_text()
    assert md2 == md1.replace(md1[md1.index("## Frames"):md1.index("## VBench")],
                              md2[md2.index("## Frames"):md2.index("## VBench")])
    # without the mp4s the stale strip is removed and the rest is re-rendered identically
    (tmp_path / "dense.mp4").unlink()
    third = render_report(tmp_path)
    assert "frames" not in third and not (tmp_path / FILES["frames"]).exists()
    assert third["markdown"].read_text().split("## Frames")[0] == md1.split("## Frames")[0]


def test_minimal_report_tolerates_missing_parts(tmp_path):
    paths = write_report(tmp_path, {"prompt": "x", "seed": 1})
    md = paths["markdown"].read_text()
    for label in HEADLINE_FIELDS:
        assert f"| {label} |" in md
    assert "n/a" in md and set(paths) == {"json", "markdown"}


def test_bad_report_values_raise(tmp_path):
    with pytest.raises(ValueError, match="expected a CompareReport or a dict"):
        write_report(tmp_path, [1, 2])
    bad = {"density": {"layers": LAYERS, "per_step_layer": [[0.5, 0.5]]}}
    with pytest.raises(ValueError, match=r"per_step_layer\[0\] has 2 entries; expected 3"):
        write_report(tmp_path, bad)
    bad = {"density": {"layers": ["a"], "per_step_layer": [[1.5]]}}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        write_report(tmp_path, bad)
    with pytest.raises(TypeError, match="cannot be stored in JSON"):
        json_safe({"x": object()})
    dense, sparse = _videos()
    with pytest.raises(ValueError, match="shape"):
        write_report(tmp_path, {"prompt": "x"}, dense_video=dense, sparse_video=sparse[:2])


def test_mean_density_is_the_records_not_recomputed(tmp_path):
    dense, sparse = _videos()
    rep = _report(dense, sparse)
    rep["density"]["mean_sparse_steps"] = 0.123  # whatever the run record said, even if the table disagrees
    assert "| Mean density after warmup | 0.123 " in write_report(tmp_path, rep)["markdown"].read_text()
    del rep["density"]["mean_sparse_steps"]
    md = write_report(tmp_path, rep)["markdown"].read_text()
    assert "| Mean density after warmup | n/a (no density recorded) |" in md
