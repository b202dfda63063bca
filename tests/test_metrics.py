"""Fidelity (PSNR / SSIM / LPIPS) and VBench-style metrics against hand-computable cases."""

import math
import textwrap

import numpy as np
import pytest
import torch

from xattn_video.metrics import (
    fidelity_report,
    lpips_per_frame,
    psnr_per_frame,
    ssim_per_frame,
    temporal_flickering,
    vbench_dimensions,
)
from xattn_video.metrics import vbench as vb


def _clip(seed=0, f=4, h=32, w=32):
    rng = np.random.default_rng(seed)
    # smooth-ish content (not pure noise) so SSIM behaves like on images
    base = rng.random((f, h // 4, w // 4, 3))
    return np.kron(base, np.ones((1, 4, 4, 1))).astype(np.float64) * 0.8 + 0.1


def test_identical_frames_psnr_inf_ssim_one():
    v = _clip()
    rep = fidelity_report(v, v.copy())
    assert rep["identical"] is True
    assert all(math.isinf(x) for x in rep["psnr"]["per_frame"])
    assert math.isinf(rep["psnr"]["mean"]) and math.isinf(rep["psnr"]["video_psnr"])
    assert rep["psnr"]["identical_frames"] == 4
    assert rep["ssim"]["per_frame"] == pytest.approx([1.0] * 4)
    assert rep["max_abs_diff"] == 0.0


@pytest.mark.parametrize("c", [0.01, 0.05, 0.1])
def test_constant_offset_psnr_exact(c):
    v = _clip()  # values in [0.1, 0.9]: adding c <= 0.1 never clips
    psnr = psnr_per_frame(v, v + c)
    expected = 10 * math.log10(1 / c**2)
    assert psnr == pytest.approx([expected] * v.shape[0], abs=1e-9)
    rep = fidelity_report(v, v + c)
    assert rep["identical"] is False
    assert rep["psnr"]["mean"] == pytest.approx(expected, abs=1e-9)
    assert rep["max_abs_diff"] == pytest.approx(c)


def test_gaussian_noise_psnr_close_to_analytic():
    sigma = 0.02
    v = np.full((3, 128, 128, 3), 0.5)  # far from 0 and 1: clipping of 0.5 +- 25 sigma never happens
    noisy = v + np.random.default_rng(1).normal(0, sigma, v.shape)
    # the sample MSE of N values has relative std sqrt(2/N); in dB that is 10/ln(10) * sqrt(2/N); allow 5 std
    tol = 5 * 10 / math.log(10) * math.sqrt(2 / v[0].size)
    assert psnr_per_frame(v, noisy) == pytest.approx([10 * math.log10(1 / sigma**2)] * 3, abs=tol)


def test_ssim_inversion_worse_than_small_noise():
    v = _clip()
    noisy = np.clip(v + np.random.default_rng(2).normal(0, 0.01, v.shape), 0, 1)
    s_noise = np.mean(ssim_per_frame(v, noisy))
    s_inv = np.mean(ssim_per_frame(v, 1.0 - v))
    assert s_inv < s_noise
    assert s_noise > 0.9


def test_uint8_and_torch_inputs_agree_with_float():
    v8 = (np.random.default_rng(3).random((2, 16, 16, 3)) * 255).astype(np.uint8)
    w8 = np.clip(v8.astype(int) + 3, 0, 255).astype(np.uint8)
    a = fidelity_report(v8, w8)
    b = fidelity_report(torch.from_numpy(v8 / 255.0), torch.from_numpy(w8 / 255.0))
    assert a["psnr"]["per_frame"] == pytest.approx(b["psnr"]["per_frame"], abs=1e-4)
    assert a["ssim"]["mean"] == pytest.approx(b["ssim"]["mean"], abs=1e-5)


def test_shape_mismatch_and_bad_inputs_raise():
    v = _clip()
    with pytest.raises(ValueError, match=r"\(4, 32, 32, 3\).*\(3, 32, 32, 3\)"):
        fidelity_report(v, v[:3])
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        fidelity_report(v[0], v[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fidelity_report(v * 2 - 1, v)  # [-1, 1] range is a mistake, not rounding noise
    with pytest.raises(ValueError, match="NaN"):
        fidelity_report(np.full_like(v, np.nan), v)


def test_lpips_unavailable_without_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("XATTN_LPIPS_WEIGHTS", raising=False)
    v = _clip()
    res = lpips_per_frame(v, v)
    assert res["available"] is False and "XATTN_LPIPS_WEIGHTS" in res["reason"]
    assert "mean" not in res
    res = fidelity_report(v, v, lpips_weights=tmp_path / "missing.pth")["lpips"]
    assert res["available"] is False and "not found" in res["reason"]


def test_lpips_with_local_alexnet_weights(tmp_path, monkeypatch):
    lpips = pytest.importorskip("lpips")  # optional package; the weights here are random, only plumbing
    import torchvision

    del lpips
    weights = tmp_path / "alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    monkeypatch.setenv("XATTN_LPIPS_WEIGHTS", str(weights))
    v = _clip(h=64, w=64)
    same = lpips_per_frame(v, v)
    assert same["available"] is True and same["mean"] == pytest.approx(0.0, abs=1e-6)
    diff = lpips_per_frame(v, 1.0 - v)
    assert diff["mean"] > 0.0 and len(diff["per_frame"]) == 4


# ----------------------------------------------------------------------------- VBench


def test_temporal_flickering_constant_difference():
    v = np.zeros((4, 8, 8, 3), np.uint8)
    for t in range(4):
        v[t] = 10 * t  # every consecutive pair differs by 10 everywhere
    assert temporal_flickering(v) == pytest.approx((255 - 10) / 255)


def test_temporal_flickering_matches_vbench_formula_by_hand():
    rng = np.random.default_rng(4)
    v = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    # VBench: mean over pairs of np.mean(cv2.absdiff(float32 a, float32 b)); score (255 - mean) / 255
    maes = [np.mean(np.abs(v[i].astype(np.float32) - v[i + 1].astype(np.float32))) for i in range(4)]
    assert temporal_flickering(v) == pytest.approx((255.0 - np.mean(maes)) / 255.0, rel=1e-6)
    # float input is converted as a video file stores it: round(255 x)
    assert temporal_flickering(v / 255.0) == pytest.approx(temporal_flickering(v), abs=1e-12)


def test_temporal_flickering_static_clip_is_one():
    v = np.repeat(_clip(f=1), 6, axis=0)
    assert temporal_flickering(v) == 1.0
    with pytest.raises(ValueError, match=">= 2 frames"):
        temporal_flickering(v[:1])


def test_vbench_dimensions_skip_model_dims_without_weights(monkeypatch):
    monkeypatch.delenv("XATTN_VBENCH_WEIGHTS", raising=False)
    out = vbench_dimensions(_clip())
    assert set(out) == {"computed", "skipped"}
    assert set(out["computed"]) == {"temporal_flickering"}
    assert set(out["skipped"]) == set(vb.MODEL_DIMENSIONS)
    assert all(isinstance(r, str) and r for r in out["skipped"].values())
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        vbench_dimensions(_clip(), dimensions=["beauty"])


def _fake_vbench(tmp_path, monkeypatch):
    """A stand-in `vbench` package with VBench's evaluate() interface, to test the plumbing offline."""
    pkg = tmp_path / "fakepkgs" / "vbench"
    pkg.mkdir(parents=True)
    pkg.joinpath("__init__.py").write_text(textwrap.dedent("""
        import json, os
        class VBench:
            def __init__(self, device, full_info_dir, output_path):
                self.out = output_path
                os.makedirs(output_path, exist_ok=True)
            def evaluate(self, videos_path, name, dimension_list=None, local=False, mode="vbench_standard"):
                assert local and mode == "custom_input" and os.path.isfile(videos_path)
                assert os.environ["VBENCH_CACHE_DIR"] and os.environ["HF_HUB_OFFLINE"] == "1"
                d = dimension_list[0]
                if d == "imaging_quality":
                    raise RuntimeError("boom")
                with open(os.path.join(self.out, name + "_eval_results.json"), "w") as f:
                    json.dump({d: [0.5, [{"video_path": videos_path, "video_results": 0.5}]]}, f)
    """))
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))


def test_vbench_model_dims_run_when_weights_present(tmp_path, monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    _fake_vbench(tmp_path, monkeypatch)
    weights = tmp_path / "vbench_cache"
    for rel in vb.MODEL_DIMENSIONS["background_consistency"] + vb.MODEL_DIMENSIONS["imaging_quality"]:
        p = weights / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    monkeypatch.setenv("XATTN_VBENCH_WEIGHTS", str(weights))
    out = vbench_dimensions(_clip(f=3), timeout_s=120)
    assert out["computed"]["background_consistency"] == 0.5
    assert "boom" in out["skipped"]["imaging_quality"]
    assert "missing under" in out["skipped"]["aesthetic_quality"]
    assert "clip_model/ViT-L-14.pt" in out["skipped"]["aesthetic_quality"]
    assert "temporal_flickering" in out["computed"]


def test_video_psnr_is_the_reports_clip_psnr():
    from xattn_video.metrics import fidelity_report, video_psnr

    rng = np.random.default_rng(3)
    ref = rng.random((5, 16, 16, 3))
    test = ref.copy()
    test[0] = np.clip(test[0] + 0.1, 0, 1)  # one frame differs, the other four are identical
    assert video_psnr(ref, test) == fidelity_report(ref, test)["psnr"]["video_psnr"]
    assert np.isfinite(video_psnr(ref, test)) and video_psnr(ref, ref) == float("inf")
