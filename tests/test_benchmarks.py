"""The GPU benchmark scripts stay runnable: their CPU smoke mode, end to end."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_bench_transformer_tiny_smoke(tmp_path):
    out = tmp_path / "bt.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_transformer.py"), "--tiny", "--structured", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    labels = [r["row"] for r in result["rows"]]
    assert labels[:2] == ["stock", "ours tau=1 (dense)"] and len(labels) == 7
    assert all(r["finite"] for r in result["rows"])
    assert result["rows"][1]["rel_l2_vs_stock"] < 1e-5, "dense path equals stock on the CPU"
    capped = next(r for r in result["rows"] if r["row"] == "xattn max_density=0.3")
    assert capped["density"] < 1.0
    assert {e["warmup_steps"] for e in result["end_to_end"]} == {0, 5, 10}
    assert len(result["structured"]) == 12 and all(0 < s["true_mass_kept"] <= 1 for s in result["structured"])
    assert "| size | row | forward ms" in proc.stdout


def test_compare_patterns_tiny_smoke(tmp_path):
    out = tmp_path / "cp.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_patterns.py"), "--size", "tiny", "--density", "0.3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert len(rows) == 9 and "synthetic" in proc.stdout and "not a model" in result["meta"]["data"]
    for name, r in rows.items():
        assert 0 < r["true_mass_kept"] <= 1 + 1e-6 and r["rel_l2"] == r["rel_l2"], name
        if name.startswith(("window", "band", "temporal", "SVG")):  # sized by fit_density: within the budget
            assert r["density"] <= 0.3, name
    assert rows["oracle (true block mass, same selection)"]["rel_l2"] < 0.5  # it keeps most of the mass
