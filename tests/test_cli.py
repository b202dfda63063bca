"""The text-to-video CLI on the embedded tiny model."""

import json
import subprocess
import sys

import pytest

from xattn_video.cli import main
from xattn_video.video_io import read_mp4


def test_generate_writes_video_and_summary(tmp_path):
    out = tmp_path / "gen"
    rc = main(["generate", "--prompt", "a red fox in the snow", "--frames", "9", "--height", "96", "--width", "128",
               "--steps", "4", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    frames = read_mp4(out / "video.mp4")
    assert frames.shape == (9, 96, 128, 3)
    assert frames.std() > 1.0, "a real, non-constant video"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 9 and summary["num_inference_steps"] == 4 and summary["warmup_steps"] == 1
    assert summary["config"]["threshold"] == 0.9
    per_step = summary["density_per_step_layer"]
    assert sorted(per_step, key=int) == ["0", "1", "2", "3"]
    assert all(d == 1.0 for d in per_step["0"].values()), "warmup step is dense"
    for step in ("1", "2", "3"):
        assert len(per_step[step]) == 4 and all(d < 1.0 for d in per_step[step].values())
    assert 0 < summary["mean_density_after_warmup"] < 1
    assert summary["wall_time_s"] > 0 and len(summary["timing"]["step_s"]) == 4


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
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "transformer").mkdir()
    assert main(["generate", "--prompt", "x", "--model", str(tmp_path)]) == 2
    assert "is incomplete: missing vae" in capsys.readouterr().err


def test_console_script_reports_usage_errors_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "xattn_video.cli", "generate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "xattn-video: error: the following arguments are required: --prompt"
