"""Ulysses sequence parallelism: the HunyuanVideo context-parallel plan and XAttention under it, on 2 CPU
processes (gloo) against one process, plus the single-process pieces (threshold slicing, key-mask order,
refusals). The 2-process run happens once per module (tests/parallel_worker.py)."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig, ParallelConfig

from parallel_worker import CONFIG, TIMESTEPS, worker
from test_processors import inputs, tiny_transformer
from xattn_video import OpConfig, XAttentionConfig, apply_xattention
from xattn_video.context_parallel import hunyuan_video_cp_plan, local_key_mask
from xattn_video.parallel import check_divisible, shard_tokens_reference, sliced_op
from xattn_video.processors import XAttentionProcessor

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    mp.spawn(worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def ranks(run_dir):
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_cli_under_torchrun_writes_once_the_single_process_video(run_dir, ranks):
    """Both ranks end well, rank 0 wrote the files: the same video and densities as one process."""
    import json

    from xattn_video.video_io import read_mp4

    assert [r["cli_rc"] for r in ranks] == [0, 0]
    assert sorted(p.name for p in (run_dir / "cp").iterdir()) == ["summary.json", "video.mp4"]
    single, cp = (json.loads((run_dir / d / "summary.json").read_text()) for d in ("single", "cp"))
    assert cp["density"]["reasons"] == single["density"]["reasons"]
    for row_cp, row_single in zip(cp["density"]["per_step_layer"], single["density"]["per_step_layer"], strict=True):
        assert row_cp == pytest.approx(row_single, abs=1e-9)
    assert 0 < cp["density"]["mean_sparse_steps"] < 1
    a, b = (read_mp4(run_dir / d / "video.mp4").astype(float) for d in ("single", "cp"))
    assert a.shape == b.shape and abs(a - b).max() <= 2.0, "the same frames (up to the video codec)"


def _close(a, b, tol=1e-5):
    return float((a - b).norm() / b.norm()) < tol


def test_exchange_equals_its_single_process_twins(ranks):
    for r in ranks:
        assert r["scatter_ok"], "scatter_heads: whole sequence in single-GPU order, this rank's heads"
        assert r["gather_ok"], "gather_heads: this rank's tokens, every head"
        assert r["mask_ok"], "gather_key_mask: the key mask in single-GPU order"


def test_plan_with_stock_processor_equals_one_process(ranks):
    """diffusers' own Ulysses attention under the plan, padded text keys included: the mask order is right."""
    for r in ranks:
        assert r["cp_stock"].shape == r["single_stock"].shape
        assert _close(r["cp_stock"], r["single_stock"])


@pytest.mark.parametrize("key", ["cp_out", "cp_first_out"])
def test_xattention_under_ulysses_equals_one_process(ranks, key):
    """Applied after (cp_out) or before (cp_first_out) context parallelism: the same video latents per step."""
    for r in ranks:
        assert len(r[key]) == len(TIMESTEPS)
        for cp, single in zip(r[key], r["single_out"]):
            assert _close(cp, single)
    steps = ranks[0]["single_out"]
    assert not _close(steps[1], ranks[0]["single_stock"], 1e-3), "sparse attention changed the output"


def test_each_rank_masks_are_the_single_process_masks_of_its_heads(ranks):
    single = ranks[0]["single_masks"]
    assert len(single) > 0 and all(m.shape[1] == 2 for m in single)
    for rank, r in enumerate(ranks):
        assert len(r["cp_masks"]) == len(single)
        for cp, one in zip(r["cp_masks"], single):
            assert cp.shape[1] == 1 and torch.equal(cp, one[:, rank:rank + 1])
    assert any(not m.all() for m in single), "some blocks were skipped"


def test_identical_decisions_on_every_rank_and_as_one_process(ranks):
    for key in ("cp_record", "cp_first_record"):
        assert ranks[0][key] == ranks[1][key], "every rank records the same calls, densities included"
        cp, single = ranks[0][key], ranks[0]["single_record"]
        assert [c[:5] for c in cp] == [c[:5] for c in single]  # step, call, layer, decision, reason
        for a, b in zip(cp, single):
            assert a[5] == pytest.approx(b[5], abs=1e-12) and a[6] == pytest.approx(b[6], abs=1e-12)
    reasons = {c[4] for c in ranks[0]["single_record"]}
    # warmup, estimated, reused, the exact layer (both heads' thresholds seen) and the break-even all occur
    assert {"warmup", "estimated", "reused", "above_break_even"} <= reasons, reasons
    assert all(len(c[6]) == 2 for c in ranks[0]["cp_record"]), "per-head densities of both ranks' heads"


def test_residual_under_ulysses_equals_one_process(ranks):
    """Each rank measures and adds back the difference of its own heads: the same outputs and decisions."""
    single = ranks[0]["res_single_record"]
    assert "residual" in {c[4] for c in single}
    for r in ranks:
        assert [c[:5] for c in r["res_cp_record"]] == [c[:5] for c in single]
        for cp, one in zip(r["res_cp_out"], r["res_single_out"]):
            assert _close(cp, one)
    assert not _close(ranks[0]["res_single_out"][1], ranks[0]["single_out"][1], 1e-4), "the residual was added"


def test_error_cases(ranks):
    for r in ranks:
        assert r["err_ring"].startswith("ValueError: XAttention does not run under ring attention (ring_degree=2)")
        assert r["err_heads"].startswith("ValueError: ulysses_degree 2 does not divide the model's 3 attention heads")
        assert "does not divide the 3 attention heads" in r["err_heads_exchange"]
        assert r["err_text"].startswith("ValueError: Ulysses degree 2 does not divide the 9 text tokens")
        assert r["err_video"].startswith("ValueError: Ulysses degree 2 does not divide the 75 video tokens")
        assert r["err_no_config"].startswith("RuntimeError: XAttentionProcessor has no parallel config")
        assert "\n" not in r["err_ring"] + r["err_text"] + r["err_no_config"]


def test_bench_parallel_tiny_smoke(run_dir):
    """benchmarks/bench_parallel.py --tiny ran in the two processes: rows, exact agreement on the CPU."""
    import json

    result = json.loads((run_dir / "bench.json").read_text())
    assert result["meta"]["world"] == 2 and "not a performance figure" in result["meta"]["note"]
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "density 0.3"}
    for r in rows.values():
        assert r["finite"] and r["ms_1"] > 0 and r["ms_n"] > 0 and 0 < r["all_to_all_share"] < 1
        assert r["rel_l2_vs_1"] < 1e-5 and r["masks_differing"] == 0 and not r["mask_count_mismatch"]
    assert rows["density 0.3"]["masks_compared"] > 0 and rows["dense"]["masks_compared"] == 0


# -- one process ---------------------------------------------------------------------------------------------

def test_sliced_op_cuts_per_head_thresholds_to_the_rank():
    op = OpConfig(threshold={"default": 0.8, "layers": {0: 0.7}, "heads": {1: [0.1, 0.2, 0.3, 0.4]}})
    part = sliced_op(op, 2, 2, 4)
    assert part.threshold_for(1, 2) == [0.3, 0.4] and part.threshold_for(0, 2) == 0.7
    assert part.threshold_for(5, 2) == 0.8 and part.block_size == op.block_size
    assert sliced_op(OpConfig(threshold=0.9), 1, 1, 2) == OpConfig(threshold=0.9)
    with pytest.raises(ValueError, match="layer 1 has 4 per-head thresholds, the model has 8 heads"):
        sliced_op(op, 0, 4, 8)


def test_local_key_mask_is_the_rank_tokens_order():
    mask = torch.arange(30)[None, None, None, :] < torch.tensor([30, 24])[:, None, None, None]  # 20 video + 10 text
    for rank in range(2):
        local = local_key_mask(mask, 20, 2, rank)
        assert torch.equal(local, shard_tokens_reference(mask, 20, rank, 2, dim=-1))
    assert local_key_mask(mask, 20, 2, 1)[1, 0, 0].tolist() == [True] * 10 + [False] * 5 + [False] * 0, \
        "rank 1 holds text tokens 5..9, of which sample 1 has none valid past 4"


def test_check_divisible_names_the_counts():
    check_divisible(heads=24, n_video=118800, n_text=256, degree=2)
    with pytest.raises(ValueError, match=r"Ulysses degree 4 does not divide the 6 attention heads"):
        check_divisible(heads=6, n_video=8, n_text=8, degree=4)


def test_ring_refused_when_xattention_is_applied():
    model = tiny_transformer()
    model._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2))
    with pytest.raises(ValueError, match=r"ring attention \(ring_degree=2\).*per-shard selection is not XAttention"):
        apply_xattention(model, XAttentionConfig(**CONFIG))
    model._parallel_config = None


def test_sharded_mask_without_parallel_config_is_an_error():
    """A processor that sees fewer tokens than the mask covers (a sharded sequence) never attends locally."""
    model = tiny_transformer()
    captured = {}
    handle = model.transformer_blocks[0].attn.register_forward_hook(
        lambda m, a, kw, o: captured.update(kw=kw, a=a), with_kwargs=True)
    with torch.no_grad():
        model(**inputs())
    handle.remove()
    kw = dict(captured["kw"])
    hs = kw.pop("hidden_states")[:, :54]
    kw["image_rotary_emb"] = tuple(t[:54] for t in kw["image_rotary_emb"])
    proc = XAttentionProcessor(XAttentionConfig(**CONFIG))
    with pytest.raises(ValueError, match="the sequence is sharded"):
        proc(model.transformer_blocks[0].attn, hs, **kw)


def test_plan_names_hunyuan_video_modules():
    model = tiny_transformer()
    plan = hunyuan_video_cp_plan()
    for name in plan:
        assert model.get_submodule(name) is not None
    assert plan["proj_out"].gather_dim == 1
