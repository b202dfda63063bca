"""Dense-vs-sparse comparison on the embedded tiny pipeline: report, speed fields, fidelity."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xattn_video.cli import main
from xattn_video.config import load_config
from xattn_video.pipelines.hunyuan_video import compare, load_pipeline
from xattn_video.report import REPORT_FIELDS, CompareReport, load_report

SIZES = dict(num_frames=9, height=96, width=96, num_inference_steps=3)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", device="cpu")


def test_tau_one_is_identical(pipe):
    cfg = load_config("tiny_cpu").replace(threshold=1.0, warmup_steps=1)
    result = compare(pipe, "a lighthouse at dusk", cfg, progress=False, **SIZES)
    assert result.report["identical"] is True
    assert np.array_equal(result.dense_video, result.sparse_video)
    assert math.isinf(result.report["fidelity"]["psnr"]["mean"])
    assert result.report["fidelity"]["ssim"]["mean"] == pytest.approx(1.0)


def test_default_config_is_sparse_with_finite_psnr(pipe, tmp_path):
    cfg = load_config("tiny_cpu").replace(warmup_steps=1)
    before = dict(pipe.transformer.attn_processors)
    result = compare(pipe, "a lighthouse at dusk", cfg, out_dir=tmp_path, progress=False, **SIZES)
    rep = result.report
    assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items()), "processors restored"
    assert 0 < rep["density"]["mean_sparse_steps"] < 1
    assert rep["identical"] is False
    assert 10 < rep["fidelity"]["psnr"]["mean"] < math.inf
    t = rep["timing"]
    for run in ("dense", "sparse"):
        assert len(t[run]["step_s"]) == 3 and len(t[run]["attention_s"]) == 3
        assert t[run]["total_s"] >= t[run]["denoise_s"] + t[run]["decode_s"] > 0
        assert all(0 < a < s for a, s in zip(t[run]["attention_s"], t[run]["step_s"]))
    assert t["speedup_end_to_end"] == pytest.approx(t["dense"]["total_s"] / t["sparse"]["total_s"])
    assert t["warmup_step_indices"] == [0]
    per_step = rep["density"]["per_step_layer"]
    assert per_step[0] == [1.0] * 4 and all(d < 1 for d in per_step[1] + per_step[2])
    assert rep["density"]["reasons"] == [["warmup"] * 4, ["estimated"] * 4, ["estimated"] * 4]
    # one definition of the mean after warmup: the run record's
    assert rep["density"]["mean_sparse_steps"] == pytest.approx(result.record.mean_density_after_warmup())
    assert result.typed == CompareReport.from_dict(rep)
    assert "temporal_flickering" in rep["vbench"]["sparse"]["computed"]
    assert "subject_consistency" in rep["vbench"]["sparse"]["skipped"]

    # the files: report.json holds every documented field; plots are real images; videos are there
    on_disk = load_report(tmp_path / "report.json")
    assert list(on_disk) == REPORT_FIELDS
    CompareReport.from_dict(on_disk)
    for name in ("density_heatmap.png", "step_times.png", "frames.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.size[0] > 100 and im.size[1] > 100
    md = (tmp_path / "report.md").read_text()
    assert "Speedup end to end" in md and "PSNR" in md
    assert (tmp_path / "dense.mp4").stat().st_size > 0 and (tmp_path / "sparse.mp4").stat().st_size > 0


def test_readme_documents_every_report_field():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for field in REPORT_FIELDS:
        assert f"`{field}`" in readme, f"README does not document report field {field!r}"


def test_cli_compare_and_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--prompt", "a kite", "--frames", "5", "--height", "64", "--width", "64", "--steps", "2",
            "--warmup", "1", "--out", str(out)]
    assert main(["compare", *args]) == 0
    assert "speedup end to end" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["num_frames"] == 5
    (out / "report.md").unlink()
    (out / "step_times.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "step_times.png").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_videos_are_written_before_the_metrics(pipe, tmp_path, monkeypatch):
    import xattn_video.metrics.fidelity as fidelity

    def broken(*args, **kwargs):
        raise RuntimeError("a metric failed late")

    monkeypatch.setattr(fidelity, "fidelity_report", broken)
    cfg = load_config("tiny_cpu").replace(warmup_steps=1)
    small = dict(num_frames=5, height=64, width=64, num_inference_steps=2)
    with pytest.raises(RuntimeError, match="a metric failed late"):
        compare(pipe, "a kite", cfg, out_dir=tmp_path, progress=False, warm_up=False, **small)
    for name in ("dense.mp4", "sparse.mp4"):
        assert (tmp_path / name).stat().st_size > 0, f"{name} was not written before the metrics ran"
    assert not (tmp_path / "report.json").exists()


def test_compare_puts_back_an_applied_xattention(pipe):
    from xattn_video import apply_xattention, remove_xattention
    from xattn_video.processors import runtime_of

    cfg = load_config("tiny_cpu")
    mine = apply_xattention(pipe, cfg)
    try:
        small = dict(num_frames=5, height=64, width=64, num_inference_steps=2)
        result = compare(pipe, "a kite", cfg.replace(warmup_steps=0), progress=False, warm_up=False, **small)
        assert runtime_of(pipe) is mine, "the user's XAttention is back"
        assert result.record is not mine.record and len(mine.record) == 0
    finally:
        remove_xattention(pipe)


def test_compare_with_the_residual(pipe):
    """The untimed warm-up runs a sparse step without warmup: the residual is left out of it, not refused."""
    cfg = load_config("tiny_cpu").replace(warmup_steps=1, residual=True)
    result = compare(pipe, "a lighthouse at dusk", cfg, progress=False, **SIZES)
    reasons = result.report["density"]["reasons"]
    assert [set(row) for row in reasons] == [{"warmup"}, {"residual"}, {"residual"}]
    assert result.report["identical"] is False and math.isfinite(result.report["fidelity"]["psnr"]["mean"])
