"""The README's promises about the repository itself."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    lines = (ROOT / ".ci" / "run").read_text().strip().replace("\\\n", "").splitlines()  # continuation lines joined
    ci_command = lines[-1]
    assert "pytest" in ci_command
    assert f"```bash\n{ci_command}\n```" in readme
    # before it, the kernel tests on the newest triton that pyproject.toml accepts
    assert any('--target "$newest_triton" "$triton_spec"' in line for line in lines)
    assert lines[-2].startswith('PYTHONPATH="$newest_triton" python -m pytest') and "test_kernels_triton.py" in lines[-2]


def test_installed_triton_is_in_the_declared_range():
    """The kernels are tested only on tritons pyproject.toml accepts (CI: the pinned one and the newest)."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    triton = pytest.importorskip("triton")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = Requirement(next(d for d in deps if d.startswith("triton")))
    assert req.specifier.contains(triton.__version__, prereleases=True), (triton.__version__, str(req.specifier))
    assert any(s.operator == "<" for s in req.specifier), "the range needs a ceiling: the newest tested triton"


def test_presets_load():
    from xattn_video.config import load_config, preset_names

    assert {"tiny_cpu", "hunyuan_720p_quality", "hunyuan_720p_fast"} <= set(preset_names())
    assert load_config("hunyuan_720p_quality").threshold == 0.95
    assert load_config("hunyuan_720p_fast").threshold == 0.9
    fast8 = load_config("hunyuan_720p_fast_8bit")
    assert (fast8.op.precision, fast8.op.estimate_precision) == ("int8-fp8", "fp8")
    assert fast8.schedule.mask_reuse_steps == 2


def test_presets_use_the_op_and_schedule_sections():
    import yaml

    from xattn_video.config import PRESET_DIR

    for path in PRESET_DIR.glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) == {"op", "schedule"}, path.name


def test_readme_points_to_the_architecture_document_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "DESIGN.md" not in readme, "the README must not send users outside the repository"
    assert "(docs/architecture.md)" in readme and (ROOT / "docs" / "architecture.md").is_file()
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for module in ("runtime/", "backends.py", "hooks.py", "comfyui/native.py", "report/"):
        assert module in architecture, module


def test_embedded_proxy_fits_its_budget_and_its_calibrated_preset_covers_every_layer():
    """The shipped checkpoint stays within 32 MB, and the preset calibrated for it names every attention layer
    with one threshold per head (a table from another depth would leave layers on its default)."""
    import json

    from xattn_video.config import load_config
    from xattn_video.pipelines.hunyuan_video import EMBEDDED_PROXY

    size = sum(f.stat().st_size for f in EMBEDDED_PROXY.rglob("*") if f.is_file())
    assert size <= 32_000_000, f"the embedded proxy takes {size:,} bytes"
    cfg = json.loads((EMBEDDED_PROXY / "transformer" / "config.json").read_text())
    heads = load_config("proxy_64x64_calibrated_d030").threshold["heads"]
    assert sorted(heads) == list(range(cfg["num_layers"] + cfg["num_single_layers"]))
    assert all(len(row) == cfg["num_attention_heads"] for row in heads.values())
