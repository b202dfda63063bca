"""The README's promises about the repository itself."""

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci_command
    assert f"```bash\n{ci_command}\n```" in readme


def test_presets_load():
    from xattn_video.config import load_config, preset_names

    assert {"tiny_cpu", "hunyuan_720p_quality", "hunyuan_720p_fast"} <= set(preset_names())
    assert load_config("hunyuan_720p_quality").threshold == 0.95
    assert load_config("hunyuan_720p_fast").threshold == 0.9


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
