"""The GPU benchmark scripts stay runnable: their CPU smoke mode, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert labels[:2] == ["stock", "ours tau=1 (dense)"] and len(labels) == 16
    rows = {r["row"]: r for r in result["rows"]}
    capped = rows["xattn max_density=0.3"]["density"]  # above 0.3 at tiny size: forced text and diagonal blocks
    assert capped < 1 and rows["xattn max_density=0.3, per-head table"]["density"] <= capped + 1e-6
    assert rows["xattn max_density=0.3, tile"]["density"] < 1, "the lever rows ran sparse"
    assert rows["xattn max_density=0.3, sink-aware"]["density"] < 1
    assert rows["xattn max_density=0.3, 8-bit"]["density"] == pytest.approx(capped, abs=0.05), "8 bits, same cap"
    assert rows["xattn tau=0.9, dense_above=0.6"]["rel_l2_vs_stock"] < 1e-5, "the fallback ran dense"
    residual = rows["xattn max_density=0.3, 8-bit, residual"]  # the step after the one measuring the residual
    assert residual["density"] == pytest.approx(capped, abs=0.05) and residual["residual_gb"] > 0
    assert residual["previous_step_ms"] > 0
    in_fp8 = rows["xattn max_density=0.3, 8-bit, residual in fp8"]
    ratio = in_fp8["residual_gb"] / residual["residual_gb"]  # float32 here: a quarter, plus a scale per row
    assert in_fp8["density"] == residual["density"] and 0.25 < ratio < 0.3
    assert all(r["finite"] for r in result["rows"])
    assert result["rows"][1]["rel_l2_vs_stock"] < 1e-5, "dense path equals stock on the CPU"
    capped = next(r for r in result["rows"] if r["row"] == "xattn max_density=0.3")
    assert capped["density"] < 1.0
    assert {e["warmup_steps"] for e in result["end_to_end"]} == {0, 5, 10}
    assert len(result["structured"]) == 12 and all(0 < s["true_mass_kept"] <= 1 for s in result["structured"])
    assert "| size | row | forward ms" in proc.stdout


def test_bench_models_tiny_smoke(tmp_path):
    """bench_models.py (Wan 2.1 14B / HunyuanVideo 1.5 rows on the GPU) at tiny size on the CPU."""
    out = tmp_path / "bm.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["row"]) for r in rows] == [
        (m, r) for m in ("wan", "hunyuan15")
        for r in ("stock", "ours dense", "xattn density 0.3", "xattn density 0.15", "xattn density 0.3, 8-bit")]
    for r in rows:
        assert r["finite"], r
        if r["row"] == "ours dense":
            assert r["rel_l2_vs_stock"] < 1e-5 and r["reasons"] == {"exact": 2}, "dense path equals stock on the CPU"
        if r["row"].startswith("xattn"):
            assert r["density"] < 1.0 and r["reasons"] == {"estimated": 2} and r["rel_l2_vs_stock"] > 0, r
    wan = {r["row"]: r["density"] for r in rows if r["model"] == "wan"}
    assert wan["xattn density 0.15"] < wan["xattn density 0.3"] <= 0.34  # the cap holds (no text in Wan's call)
    assert wan["xattn density 0.3, 8-bit"] <= 0.34
    assert "| model | row | tokens | forward ms" in proc.stdout
    fp8 = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--tiny", "--model", "wan",
                          "--fp8-linear", "--rows", "stock,density 0.3", "--out", str(tmp_path / "fp8.json")],
                         capture_output=True, text=True, timeout=300)
    assert fp8.returncode == 0, fp8.stderr[-2000:]
    result = json.loads((tmp_path / "fp8.json").read_text())
    assert result["linear_layers"].startswith("float8") and "linear layers in float8" in fp8.stdout
    assert [r["row"] for r in result["rows"]] == ["stock", "xattn density 0.3", "xattn density 0.3, 8-bit"]
    assert all(r["finite"] for r in result["rows"]) and 0 < result["rows"][1]["rel_l2_vs_stock"] < 0.2


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


def test_train_proxy_toy_smoke(tmp_path):
    """train_proxy.py end to end at toy size: trains, picks sampler settings, measures, writes a loadable folder."""
    script = str(ROOT / "benchmarks" / "train_proxy.py")
    proc = subprocess.run([sys.executable, script, "--toy", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "train_proxy.json").read_text())
    assert report["provenance"].startswith("model trained here on procedural video")
    assert len(report["train"]["losses"]) >= 1 and {"small", "large", "seen_small"} <= set(report["follow"])
    c = report["concentration"]
    assert 0 < c["oracle_density_90_mean"] <= 1 and len(c["oracle_density_90_per_layer"]) == 2
    from xattn_video.proxy.model import load_proxy, read_info

    info = read_info(tmp_path / "model")
    assert info.defaults["num_inference_steps"] == 3 and info.training["seed"] == 0
    assert load_proxy(tmp_path / "model").transformer.config.num_layers == 1
    # resumed with one more single-stream block: trains, measures every layer, says where it came from
    grown = tmp_path / "grown"
    proc = subprocess.run([sys.executable, script, "--toy", "--resume", str(tmp_path / "model"), "--grow-single", "1",
                           "--out", str(grown)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_proxy(grown / "model").transformer.config.num_single_layers == 2
    assert read_info(grown / "model").training["continued_from"]["then_grown"] == {"single_blocks": 1, "added": 1}
    report = json.loads((grown / "train_proxy.json").read_text())
    assert len(report["concentration"]["oracle_density_90_per_layer"]) == 3


def test_bench_quality_toy_smoke(tmp_path):
    """bench_quality.py end to end at toy size on the embedded proxy: every family runs through the runtime."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--toy", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "quality.json").read_text())
    assert "not HunyuanVideo's weights" in result["meta"]["provenance"]
    families = {r["family"] for r in result["rows"]}
    assert {"xattention", "xattention cap", "STA (3D window)", "SVG (spatial/temporal)", "Radial", "random",
            "xattention cap +tile", "xattention calibrated by mass", "xattention calibrated by error",
            "xattention tau fitted", "xattention cap reuse"} <= families
    fitted = next(r for r in result["rows"] if r["family"] == "xattention tau fitted")
    assert fitted["params"]["tau"] < 0.95 and fitted["params"]["profiled_density"] <= 0.3 + 1e-9
    assert (tmp_path / "calibrated_error_0.3.yaml").is_file() and (tmp_path / "profile.json").is_file()
    for r in result["rows"]:
        assert 0 < r["density"] <= 1 and r["psnr"] > 0 and 0 < r["ssim"] <= 1
        assert r["reasons"].get("source", 0) + r["reasons"].get("estimated", 0) > 0, "sparse calls ran"
    random_row = next(r for r in result["rows"] if r["family"] == "random")
    assert abs(random_row["density"] - 0.3) < 0.05, "the random floor is sized to its target"
    assert (tmp_path / "quality_pareto.png").stat().st_size > 0
    assert "| method |" in (tmp_path / "quality.md").read_text()
    # the levers alone, calibrated from the profile just saved (no profiling run), some methods only: the same
    # calibrated rows
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--toy", "--levers-only",
                           "--profiles", str(tmp_path), "--only", r"calibrated|cap=0\.3$", "--out", str(again)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((again / "quality.json").read_text())["rows"]
    assert {r["family"] for r in rows} == {"xattention cap", "xattention calibrated by mass",
                                           "xattention calibrated by error"}
    assert [r["method"] for r in rows if r["family"] == "xattention cap"] == ["XAttention tau=0.95 cap=0.3"]
    first = {r["method"]: r["psnr"] for r in result["rows"]}
    assert all(first[r["method"]] == r["psnr"] for r in rows if "calibrated" in r["method"])
    # no calibrated row selected: nothing is profiled (profiling costs more than a run)
    plain = tmp_path / "plain"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--toy", "--levers-only",
                           "--only", r"cap=0\.3$", "--out", str(plain)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["method"] for r in json.loads((plain / "quality.json").read_text())["rows"]] == [
        "XAttention tau=0.95 cap=0.3"]
    assert not list(plain.glob("profile*.json")) and "calibrated" not in proc.stdout


def test_bench_sink_tiny_smoke(tmp_path):
    out = tmp_path / "sink.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sink.py"), "--size", "tiny", "--seeds", "1",
                           "--q-blocks", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "not a model" in result["meta"]["data"] and "| selection | estimate |" in proc.stdout
    assert len(result["structured"]) == 2 * 5 and all(0 < r["true_mass_kept"] <= 1 + 1e-6
                                                      for r in result["structured"])
    planted = {(r["seed"], r["estimate"]): r for r in result["planted"]}
    for seed in range(3):  # the mean drops the planted sink at tau = 0.9, the sink-aware estimate keeps it
        assert not planted[seed, "mean (XAttention)"]["sink_block_kept"]
        assert planted[seed, "sink-aware"]["sink_block_kept"]


def test_bench_compose_tiny_smoke(tmp_path):
    """bench_compose.py: compiled vs eager step, XAttention / First-Block-Cache / both end to end, proxy quality."""
    out = tmp_path / "bc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_compose.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    step = {r["mode"]: r for r in result["step"]}
    assert set(step) == {"eager", "compiled"} and step["compiled"]["rel_l2_vs_eager"] < 1e-5
    assert step["compiled"]["graph_breaks"] <= 1 and step["eager"]["density"] < 1.0
    e2e = {r["row"]: r for r in result["e2e"]}
    assert list(e2e) == ["stock", "xattention", "first-block-cache", "xattention + first-block-cache"]
    assert e2e["first-block-cache"]["steps_skipped_by_cache"] >= 1 and e2e["stock"]["steps_skipped_by_cache"] == 0
    assert e2e["xattention"]["density_after_warmup"] < 1.0 and all(r["finite"] for r in e2e.values())
    quality = {r["row"]: r for r in result["quality"]}
    assert quality["dense"]["psnr_vs_dense_db"] == "inf"
    assert all(isinstance(quality[k]["psnr_vs_dense_db"], float) for k in list(quality)[1:])
    assert "procedural video" in result["meta"]["weights"]
    det = result["determinism"][0]
    assert det["masks"] == 2 and det["masks_identical"] and det["identical"]  # tiny model: 2 layers, CPU


def test_gluon_kernel_experiment_compiles_with_the_overlap():
    """gluon_bsa.py (issue 14's Gluon experiment, not in the package) builds for sm_90a on a CPU, in bf16 and fp8:
    the loop waits for one product while the other runs (``wgmma.wait_group 1``), and nothing spills; its "poly"
    variant computes half the softmax's exponentials on the FMA units (half the ``ex2`` instructions)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # Gluon has no interpreter: a real build
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gluon_bsa.py"), "--compile-only"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    infos = json.loads(proc.stdout[proc.stdout.index("["):])
    assert [(i["precision"], i["poly"]) for i in infos] == [("native", False), ("native", True), ("fp8", False),
                                                            ("fp8", True)]
    for info in infos:
        assert "1" in info["wait_group"] and info["wgmma"] > 0
        assert "0 bytes spill stores" in info["ptxas"] and info["shared_bytes"] <= 232_448  # Hopper's 227 KiB
    for exact, poly in (infos[0:2], infos[2:4]):
        # two tiles' weights (128 x 128 over 256 threads: 64 a thread each) and the rescale's 2 per thread
        assert exact["ex2"] == 2 * 64 + 2 and poly["ex2"] == 2 * 32 + 2


def test_cudnn_block_sparse_row_passes_our_mask_unchanged(monkeypatch):
    """cudnn_block_sparse.py (bench_attention's cuDNN block-sparse row): without cuDNN a one-line reason; with its
    API (a stand-in recording the call) our mask goes over as is: the kept ids (padding made a valid id), the counts,
    blocks of 128, and the valid keys per key block where keys are padded, so cuDNN masks them as we do."""
    import types

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cudnn_block_sparse as cbs
    from xattn_video.block_mask import BlockSparseMask

    monkeypatch.setitem(sys.modules, "cudnn", None)  # not installed
    reason = cbs.cudnn_block_sparse_unavailable_reason()
    assert reason.startswith("cuDNN frontend BSA not importable") and "\n" not in reason

    calls = []

    def forward(q, k, v, index, num, block_sizes, counts, **kw):
        calls.append(dict(index=index, num=num, block_sizes=block_sizes, counts=counts, **kw))
        return {"o_tensor": torch.zeros_like(q)}

    api = types.ModuleType("cudnn.block_sparse_attention.api")
    api.block_sparse_attention_forward = forward
    monkeypatch.setitem(sys.modules, "cudnn", types.ModuleType("cudnn"))
    monkeypatch.setitem(sys.modules, "cudnn.block_sparse_attention", types.ModuleType("cudnn.block_sparse_attention"))
    monkeypatch.setitem(sys.modules, "cudnn.block_sparse_attention.api", api)
    n = 300  # 3 blocks, the last one partial; keys past 270 (batch 0) / 140 (batch 1) are padding
    keep = torch.rand(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[..., 0] = True
    mask = BlockSparseMask.from_dense(keep, 128, n, torch.tensor([270, 140]))
    q = torch.randn(2, 2, n, 128)
    fn = cbs.make_cudnn_block_sparse(q, q, q, mask, warmup=False)
    assert not calls
    fn()
    (call,) = calls
    assert call["sparse_block_size"] == 128 and call["layout"] == "bhsd" and call["softmax_scale"] == pytest.approx(
        128 ** -0.5)
    assert torch.equal(call["counts"], mask.kv_counts.to(torch.int32))
    kept = torch.arange(mask.kv_indices.shape[-1]) < mask.kv_counts[..., None]
    assert torch.equal(call["index"][kept], mask.kv_indices.to(torch.int32)[kept]) and (call["index"] >= 0).all()
    assert call["block_sizes"].tolist() == [[128, 128, 14], [128, 12, 0]]
    blocks_of_64 = BlockSparseMask.from_dense(torch.ones(2, 2, 5, 5, dtype=torch.bool), 64, n, torch.tensor([n, n]))
    with pytest.raises(ValueError, match="block_size 128"):
        cbs.make_cudnn_block_sparse(q, q, q, blocks_of_64, warmup=False)
