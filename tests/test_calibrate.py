"""Calibration: the profiler's measurements against a direct computation, the threshold choice, and the
command end to end on the tiny model."""

import itertools

import pytest
import torch

from xattn_video import XAttentionConfig
from xattn_video.calibrate import (ThresholdProfile, ThresholdProfiler, choose_thresholds, profile_thresholds,
                                   summarise)
from xattn_video.config import OpConfig
from xattn_video.estimate import estimate_mask
from xattn_video.runtime import MaskRequest


def _request(b=2, h=3, n_video=300, n_text=13, valid_text=(13, 7), d=32, block=32, seed=0, **op):
    g = torch.Generator().manual_seed(seed)
    n = n_video + n_text
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, n, d, generator=g)
    k[:, :, :n_video] += 2.0 * q[:, :, :n_video]  # a diagonal-heavy pattern, so thresholds matter
    v = torch.randn(b, h, n, d, generator=g)
    kv_len = torch.tensor([n_video + t for t in valid_text])
    return MaskRequest(q, k, kv_len, n_video, 0, 5, 0, OpConfig(block_size=block, stride=8, backend="reference", **op),
                       v)


def _direct(req: MaskRequest, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head: density of the op's mask, the true softmax mass its blocks keep and the relative error of
    attention restricted to them, over the video query blocks wholly inside the sequence — with an additive
    -inf mask and SDPA, independently of the profiler's code."""
    op = req.config
    mask = estimate_mask(req.q, req.k, block_size=op.block_size, stride=op.stride, threshold=tau,
                         kv_len=req.kv_len, global_start=req.global_start)
    keep = mask.to_dense()
    b, h, n, d = req.q.shape
    bs = op.block_size
    rows = min(-(-req.global_start // bs), n // bs)
    mass = torch.zeros(h, dtype=torch.float64)
    error = torch.zeros(h, dtype=torch.float64)
    for bi in range(b):
        valid = int(req.kv_len[bi])
        q, k, v = req.q[bi, :, :rows * bs], req.k[bi, :, :valid], req.v[bi, :, :valid]
        p = torch.softmax((q @ k.transpose(-1, -2)) * d ** -0.5, -1)
        kept = keep[bi, :, :rows].repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :rows * bs, :valid]
        mass += (p * kept).sum(-1).double().mean(-1)
        full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        sparse = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=torch.zeros(kept.shape).masked_fill(~kept, float("-inf")))
        error += ((sparse - full).norm(dim=(-1, -2)) / full.norm(dim=(-1, -2))).double()
    return mask.density_per_head().mean(0), mass / b, error / b


@pytest.mark.parametrize("block,n_video", [(32, 300), (64, 257)])
def test_profiler_matches_a_direct_computation(block, n_video):
    req = _request(block=block, n_video=n_video)
    profiler = ThresholdProfiler(taus=(0.6, 0.9, 1.0))
    out = profiler(req)
    assert out.density() == 1.0, "the profiler returns every block: the generation stays dense"
    prof = profiler.profile
    assert prof.calls == {0: 1}
    for i, tau in enumerate(prof.taus):
        density, mass, error = _direct(req, tau)
        torch.testing.assert_close(prof.density[0][:, i], density.double(), atol=1e-9, rtol=0)
        torch.testing.assert_close(prof.mass[0][:, i], mass, atol=1e-4, rtol=0)
        torch.testing.assert_close(prof.error[0][:, i], error, atol=1e-4, rtol=1e-3)
    assert (prof.mass[0][:, -1] > 0.999).all() and (prof.error[0][:, -1] < 1e-3).all(), "tau = 1 is exact"
    assert (prof.error[0][:, 0] > 0.01).all(), "a low threshold changes the output"
    assert (prof.mass[0].diff(dim=-1) >= -1e-6).all() and (prof.density[0].diff(dim=-1) >= -1e-9).all()


def test_profiler_samples_query_blocks_evenly():
    req = _request()
    full, sampled = ThresholdProfiler(taus=(0.9,)), ThresholdProfiler(taus=(0.9,), query_blocks=3)
    full(req)
    sampled(req)
    assert torch.equal(full.profile.density[0], sampled.profile.density[0]), "density always counts every row"
    assert not torch.equal(full.profile.mass[0], sampled.profile.mass[0])
    assert (sampled.profile.mass[0] - full.profile.mass[0]).abs().max() < 0.1


def _profile(density: list[list[float]], mass: list[list[float]], error: list[list[float]] | None = None,
             taus=(0.5, 0.7, 0.9, 1.0)) -> ThresholdProfile:
    p = ThresholdProfile(taus)
    error = [[1.0 - x for x in row] for row in mass] if error is None else error
    p.add(3, *(torch.tensor(x, dtype=torch.float64) for x in (density, mass, error)))
    return p


PROFILE = dict(density=[[0.1, 0.15, 0.2, 1.0], [0.2, 0.4, 0.6, 1.0], [0.05, 0.1, 0.3, 1.0]],
               mass=[[0.95, 0.97, 0.99, 1.0], [0.6, 0.8, 0.93, 1.0], [0.7, 0.9, 0.96, 1.0]])


def test_mass_budget_picks_the_lowest_threshold_reaching_it():
    table = choose_thresholds(_profile(**PROFILE), mass=0.92)
    assert table["heads"] == {3: [0.5, 0.9, 0.9]}
    assert choose_thresholds(_profile(**PROFILE), mass=0.999)["heads"] == {3: [1.0, 1.0, 1.0]}


def test_density_budget_is_met_and_beats_every_single_threshold():
    prof = _profile(**PROFILE)
    for target in (0.2, 0.3, 0.45):
        table = choose_thresholds(prof, density=target)
        s = summarise(prof, table)
        assert s["density"] <= target + 1e-9
        # brute force over all per-head choices: the Lagrangian choice is on the hull, never far from the best
        d, m = torch.tensor(PROFILE["density"]), torch.tensor(PROFILE["mass"])
        best = max(float(m[range(3), list(c)].mean()) for c in itertools.product(range(4), repeat=3)
                   if float(d[range(3), list(c)].mean()) <= target + 1e-9)
        assert s["mass"] >= s["single_tau_mass"] - 1e-9 and s["mass"] >= best - 0.05


def test_density_budget_by_output_error():
    """Head 1's error falls slowly with tau (mass says it needs the budget, its output says it does not): the
    error objective spends the density on the other heads instead."""
    error = [[0.30, 0.10, 0.02, 0.0], [0.05, 0.04, 0.03, 0.0], [0.20, 0.10, 0.05, 0.0]]
    prof = _profile(PROFILE["density"], PROFILE["mass"], error)
    by_mass = choose_thresholds(prof, density=0.3)
    by_error = choose_thresholds(prof, density=0.3, by="error")
    s_mass, s_error = summarise(prof, by_mass), summarise(prof, by_error)
    assert s_error["density"] <= 0.3 + 1e-9 and s_error["error"] < s_mass["error"]
    assert by_error["heads"][3][1] < by_mass["heads"][3][1], "head 1's density went to the other heads"


def test_choose_thresholds_errors():
    prof = _profile(**PROFILE)
    with pytest.raises(ValueError, match="exactly one"):
        choose_thresholds(prof)
    with pytest.raises(ValueError, match="exactly one"):
        choose_thresholds(prof, mass=0.9, density=0.3)
    with pytest.raises(ValueError, match=r"mass=1.5 is out of range: accepted \(0, 1\]"):
        choose_thresholds(prof, mass=1.5)
    with pytest.raises(ValueError, match="profile is empty"):
        choose_thresholds(ThresholdProfile((0.9,)), mass=0.9)
    with pytest.raises(ValueError, match="taus"):
        ThresholdProfiler(taus=(0.0, 0.9))
    with pytest.raises(ValueError, match="by='speed': accepted 'mass' or 'error'"):
        choose_thresholds(prof, density=0.3, by="speed")
    legacy = prof.to_dict()
    for layer in legacy["layers"].values():
        del layer["error"]
    with pytest.raises(ValueError, match="no output errors"):
        choose_thresholds(ThresholdProfile.from_dict(legacy), density=0.3, by="error")


def test_profile_round_trips(tmp_path):
    prof = _profile(**PROFILE)
    prof.save(tmp_path / "p.json")
    back = ThresholdProfile.load(tmp_path / "p.json")
    assert back.taus == prof.taus and back.calls == prof.calls
    assert torch.equal(back.mass[3], prof.mass[3]) and torch.equal(back.density[3], prof.density[3])
    assert torch.equal(back.error[3], prof.error[3])


def test_calibration_on_the_tiny_model_end_to_end(tmp_path):
    """Profiling leaves the video dense; the command writes a config with one threshold per layer and head."""
    from xattn_video.cli import main
    from xattn_video.pipelines.hunyuan_video import generate, load_pipeline

    pipe = load_pipeline("tiny")
    sizes = dict(num_frames=9, height=128, width=128, num_inference_steps=3)
    config = XAttentionConfig(block_size=32, stride=8, warmup_steps=1)
    dense = generate(pipe, "a red fox", progress=False, **sizes)
    profile = profile_thresholds(pipe, ["a red fox"], config, progress=False, **sizes)
    again = generate(pipe, "a red fox", progress=False, **sizes)
    assert (dense == again).all(), "the profiled run was the dense one, and nothing stays applied"
    assert sorted(profile.calls) == [0, 1, 2, 3] and set(profile.calls.values()) == {2}, "2 steps after warmup"
    # a config with the residual profiles the same calls (the residual would otherwise hold the warmup's masks)
    with_residual = profile_thresholds(pipe, ["a red fox"], config.replace(residual=True), progress=False, **sizes)
    assert with_residual.calls == profile.calls

    out = tmp_path / "cal.yaml"
    rc = main(["calibrate", "--model", "tiny", "--prompt", "a red fox", "--frames", "9", "--height", "128",
               "--width", "128", "--steps", "3", "--warmup", "1", "--density", "0.6", "--by", "error", "--out",
               str(out)])
    assert rc == 0 and out.with_suffix(".profile.json").is_file()
    loaded = XAttentionConfig.load(out)
    heads = loaded.op.threshold["heads"]
    assert sorted(heads) == [0, 1, 2, 3] and all(len(v) == 2 for v in heads.values())
    assert loaded.schedule.warmup_steps == 1 and loaded.op.block_size == 32, "the rest is the tiny preset's"
    with pytest.raises(ValueError, match="no attention call was profiled"):
        profile_thresholds(pipe, ["a red fox"], config.replace(warmup_steps=3), progress=False, **sizes)


def test_calibrate_needs_prompts_for_a_model_folder(tmp_path, capsys):
    from xattn_video.cli import main

    (tmp_path / "model_index.json").write_text("{}")
    assert main(["calibrate", "--model", str(tmp_path)]) == 2
    assert "--prompt is required" in capsys.readouterr().err
