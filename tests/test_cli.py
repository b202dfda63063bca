"""The text-to-video CLI: its machinery on the tiny random-weight model, its default on the embedded proxy."""

import json
import subprocess
import sys

import pytest

from xattn_video.cli import main
from xattn_video.report import SUMMARY_FIELDS, GenerateSummary
from xattn_video.video_io import read_mp4


def test_generate_writes_video_and_summary(tmp_path):
    out = tmp_path / "gen"
    rc = main(["generate", "--prompt", "a red fox in the snow", "--model", "tiny", "--frames", "9", "--height", "96",
               "--width", "128", "--steps", "4", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    frames = read_mp4(out / "video.mp4")
    assert frames.shape == (9, 96, 128, 3)
    assert frames.std() > 1.0, "a real, non-constant video"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == SUMMARY_FIELDS
    GenerateSummary.from_dict(summary)  # the typed schema reads it back
    assert summary["num_frames"] == 9 and summary["num_inference_steps"] == 4 and summary["warmup_steps"] == 1
    assert summary["config"]["op"]["threshold"] == 0.9 and summary["config"]["schedule"]["warmup_steps"] == 1
    density = summary["density"]  # the same DensityReport as compare's report.json
    assert len(density["layers"]) == 4 and len(density["per_step_layer"]) == 4
    assert density["per_step_layer"][0] == [1.0] * 4, "the warmup step is dense, recorded as 1.0"
    assert density["reasons"][0] == ["warmup"] * 4 and density["reasons"][1] == ["estimated"] * 4
    assert all(d < 1.0 for row in density["per_step_layer"][1:] for d in row)
    after = [d for row in density["per_step_layer"][1:] for d in row]
    assert density["mean_sparse_steps"] == pytest.approx(sum(after) / len(after))
    assert summary["wall_time_s"] > 0 and len(summary["timing"]["step_s"]) == 4


def test_default_model_draws_what_the_caption_says(tmp_path):
    """The embedded proxy (trained here on procedural video) at its default size and steps, as a new user runs
    it: the red object's centroid moves right over the frames."""
    from xattn_video.proxy.follow import colour_centroids, follows_caption

    out = tmp_path / "gen"
    assert main(["generate", "--prompt", "a red circle moving right", "--out", str(out)]) == 0
    frames = read_mp4(out / "video.mp4") / 255.0
    assert frames.shape == (9, 32, 32, 3)
    xs = [c[0] for c in colour_centroids(frames, "red") if c is not None]
    assert len(xs) == 9, "the red object is visible in every frame"
    assert xs[-1] - xs[0] > 0.2 and sum(b > a for a, b in zip(xs, xs[1:])) >= 6, xs
    assert follows_caption(frames, "a red circle moving right").followed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "proxy" and summary["num_inference_steps"] == 20
    assert summary["config"]["op"]["block_size"] == 64, "the proxy's preset, proxy_cpu"
    assert 0 < summary["density"]["mean_sparse_steps"] < 1, "XAttention skipped blocks after the warmup"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--frames", "6"], "--frames=6 must be 4k+1"),
        (["--height", "100"], "--height=100 must be a multiple of 16"),
        (["--threshold", "0"], "threshold=0.0 is out of range"),
        (["--steps", "0"], "--steps=0 must be >= 1"),
        (["--model", "/no/such/folder"], "model folder '/no/such/folder' does not exist"),
        (["--config", "nope"], "config 'nope' is neither a file nor a preset"),
    ],
)
def test_bad_arguments_one_line_exit_2(args, message, capsys, tmp_path):
    rc = main(["generate", "--prompt", "x", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_incomplete_model_folder(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text('{"_class_name": "HunyuanVideoPipeline"}')
    (tmp_path / "transformer").mkdir()
    assert main(["generate", "--prompt", "x", "--model", str(tmp_path)]) == 2
    assert "is incomplete: missing vae" in capsys.readouterr().err


def test_console_script_reports_usage_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "xattn_video.cli", "generate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "xattn-video: error: the following arguments are required: --prompt"


def test_compare_without_the_metrics_extra_fails_before_any_work(monkeypatch, capsys, tmp_path):
    import sys as _sys

    import xattn_video.pipelines.hunyuan_video as hv

    monkeypatch.setitem(_sys.modules, "skimage", None)  # as if scikit-image were not installed

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing extra was reported")

    monkeypatch.setattr(hv, "load_pipeline", no_load)
    rc = main(["compare", "--prompt", "x", "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "scikit-image" in err and "pip install 'xattn-video[metrics]'" in err
    assert not (tmp_path / "cmp").exists()
