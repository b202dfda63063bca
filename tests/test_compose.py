"""XAttention composed with what users combine it with, on the tiny random-weight pipeline (CPU): torch.compile,
diffusers' First-Block-Cache and Pyramid Attention Broadcast, model CPU offload and group offloading, LoRA, and
determinism under a fixed seed."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig
from torch._dynamo.testing import CompileCounterWithBackend

import xattn_video.runtime.runtime as runtime_module
from xattn_video import XAttentionConfig, apply_xattention, remove_xattention
from xattn_video.pipelines.tiny import tiny_call_kwargs, tiny_pipeline

# 9 frames of 64 x 64 -> 3 x 4 x 4 = 48 video tokens + up to 24 text tokens: 4-5 blocks of 16
CALL = dict(prompt="a red circle moving right", num_frames=9, height=64, width=64)
CFG = XAttentionConfig(block_size=16, stride=4, threshold=0.7, warmup_steps=2)


def generate(pipe, steps: int = 5, output_type: str = "latent", seed: int = 0) -> torch.Tensor:
    return pipe(**CALL, num_inference_steps=steps, output_type=output_type,
                generator=torch.Generator().manual_seed(seed), **tiny_call_kwargs()).frames


def by_step(runtime) -> dict[int, list[tuple[int, str]]]:
    """{step: [(layer, reason), ...]} of the latest run."""
    table: dict[int, list[tuple[int, str]]] = {}
    for c in runtime.record.calls:
        table.setdefault(c.step, []).append((c.layer, c.reason))
    return table


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def sparse_reference(pipe):
    """Latents and record keys of a plain sparse run (no cache, no offload, eager)."""
    runtime = apply_xattention(pipe, CFG)
    try:
        latents = generate(pipe)
        keys = [c.key() for c in runtime.record.calls]
    finally:
        remove_xattention(pipe)
    assert {r for c in keys for r in [c[4]]} >= {"warmup", "estimated"}  # warmup, then really sparse
    return latents, keys


# -- torch.compile ------------------------------------------------------------------------------------------

def test_compiled_transformer_matches_eager(pipe, sparse_reference):
    """``torch.compile(pipe.transformer)`` with our processors: the same latents as eager, the same per-call
    decisions step by step (warmup, then estimated masks: decided at run time, not baked into the graph), at
    most one graph break (the step hook reading the timestep, before any compute) and no recompile per step.

    Backend ``aot_eager`` (dynamo + AOT autograd + the custom op's fake, everything but code generation): a
    cold CPU inductor compile of this model took 106 s here, too slow for the suite; the GPU benchmark
    (``benchmarks/bench_compose.py``) runs inductor.
    """
    latents, keys = sparse_reference
    runtime = apply_xattention(pipe, CFG)
    original = pipe.transformer
    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return counter_backend(gm, example_inputs)

    counter_backend = CompileCounterWithBackend("aot_eager")
    try:
        pipe.transformer = torch.compile(original, backend=backend)
        got = generate(pipe)
        compiled_keys = [c.key() for c in runtime.record.calls]
    finally:
        pipe.transformer = original
        remove_xattention(pipe)
        torch._dynamo.reset()
    assert 1 <= counter_backend.frame_count <= 2, counter_backend.frame_count  # 5 steps, no recompile
    attend_calls = [n for gm in graphs for n in gm.graph.nodes if "xattn_video.attend" in str(n.target)]
    assert len(attend_calls) == 4  # every block's attention inside the compiled graph, as the custom op
    assert compiled_keys == keys
    torch.testing.assert_close(got, latents, atol=1e-5, rtol=1e-5)


def test_regional_compile_shares_one_graph_across_blocks(pipe, sparse_reference):
    """``transformer.compile_repeated_blocks()`` (diffusers' regional compilation) compiles each block on its
    own; with the layer index a graph constant every block recompiled (HunyuanVideo's 20 double blocks would
    pass dynamo's limit of 8 and run the rest eager). Both double blocks now share one graph, and the
    latents and per-call decisions equal eager's."""
    latents, keys = sparse_reference
    runtime = apply_xattention(pipe, CFG)
    blocks = list(pipe.transformer.transformer_blocks)
    assert len(blocks) == 2
    counter = CompileCounterWithBackend("aot_eager")
    try:
        for block in blocks:
            block.compile(backend=counter)  # what compile_repeated_blocks does for this block class
        got = generate(pipe)
        compiled_keys = [c.key() for c in runtime.record.calls]
    finally:
        for block in blocks:
            block._compiled_call_impl = None
        remove_xattention(pipe)
        torch._dynamo.reset()
    assert counter.frame_count == 1, counter.frame_count
    assert compiled_keys == keys
    torch.testing.assert_close(got, latents, atol=1e-5, rtol=1e-5)


def test_compile_graph_breaks_listed():
    """``torch._dynamo.explain`` on one forward: the attention calls are no longer graph breaks (they were 26
    breaks in 27 graphs: ``.item()`` in the padding parser and the op's checks, ``tolist()``, the timer)."""
    pipe = tiny_pipeline(seed=0)
    model = pipe.transformer
    apply_xattention(model, XAttentionConfig(block_size=16, stride=4, threshold=0.7, warmup_steps=0))
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=torch.tensor([900.0]),
                  encoder_hidden_states=torch.randn(1, 24, 32, generator=g),
                  encoder_attention_mask=torch.ones(1, 24, dtype=torch.long),
                  pooled_projections=torch.randn(1, 16, generator=g), guidance=torch.tensor([6000.0]),
                  return_dict=False)
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**kwargs)
    torch._dynamo.reset()
    reasons = [b.reason for b in explained.break_reasons]
    assert explained.graph_break_count <= 1, reasons
    assert all("item()" in r for r in reasons), reasons  # the step hook's float(timestep) only


# -- caches -------------------------------------------------------------------------------------------------

def test_first_block_cache_keeps_the_step_count(pipe, sparse_reference):
    """First-Block-Cache skips every block after the first on some steps: the runtime still counts every step
    (the warmup is 2 steps, not 2 forwards of all layers) and is sparse after it."""
    runtime = apply_xattention(pipe, CFG)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.4))
    try:
        got = generate(pipe, steps=6)
        table = by_step(runtime)
    finally:
        pipe.transformer.disable_cache()
        remove_xattention(pipe)
    assert sorted(table) == list(range(6))
    skipped = [s for s, calls in table.items() if {layer for layer, _ in calls} == {0}]
    assert skipped, table  # the cache really skipped blocks
    for step, calls in table.items():
        want = "warmup" if step < 2 else "estimated"
        assert {reason for _, reason in calls} == {want}, (step, calls)
    assert torch.isfinite(got).all()


def test_pyramid_attention_broadcast_keeps_the_step_count(pipe):
    """PAB reuses whole attention outputs every other step: those steps call no processor, yet the warmup
    still ends after step 1 (step 2 is sparse)."""
    runtime = apply_xattention(pipe, CFG)
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep))
    try:
        got = generate(pipe, steps=5)
        table = by_step(runtime)
    finally:
        pipe.transformer.disable_cache()
        remove_xattention(pipe)
    assert sorted(table) == [0, 2, 4]
    assert {r for _, r in table[0]} == {"warmup"}
    assert {r for _, r in table[2]} == {r for _, r in table[4]} == {"estimated"}
    assert len(table[2]) == 4 and torch.isfinite(got).all()


# -- offloading ---------------------------------------------------------------------------------------------

def _offload(pipe, kind: str) -> None:
    if kind == "model_cpu_offload":
        # no accelerator here: the onload device is the CPU itself, so this checks that accelerate's hooks and
        # ours compose (not the transfers)
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                              offload_type="block_level", num_blocks_per_group=1)


@pytest.mark.parametrize("kind", ["model_cpu_offload", "group_offload"])
@pytest.mark.parametrize("apply_first", [True, False])
def test_offloading_gives_the_same_run(kind, apply_first, sparse_reference):
    latents, keys = sparse_reference
    pipe = tiny_pipeline(seed=0)
    stock = generate(pipe, steps=2)
    if apply_first:
        runtime = apply_xattention(pipe, CFG)
        _offload(pipe, kind)
    else:
        _offload(pipe, kind)
        runtime = apply_xattention(pipe, CFG)
    got = generate(pipe)
    assert [c.key() for c in runtime.record.calls] == keys
    assert torch.equal(got, latents)
    remove_xattention(pipe)  # the stock model comes back, offloading still in place
    assert torch.equal(generate(pipe, steps=2), stock)


# -- LoRA ---------------------------------------------------------------------------------------------------

def _inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=torch.tensor([900.0]),
                encoder_hidden_states=torch.randn(1, 24, 32, generator=g),
                encoder_attention_mask=(torch.arange(24) < 17).long()[None],  # padded text
                pooled_projections=torch.randn(1, 16, generator=g), guidance=torch.tensor([6000.0]),
                return_dict=False)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A LoRA on every attention projection of the tiny transformer, saved as diffusers saves one."""
    from peft import LoraConfig

    model = tiny_pipeline(seed=0).transformer
    torch.manual_seed(7)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]), adapter_name="x")
    path = tmp_path_factory.mktemp("lora")
    model.save_lora_adapter(str(path), adapter_name="x")
    return path


@pytest.mark.parametrize("lora_first", [True, False])
def test_lora_with_xattention_in_either_order(lora_first, lora_dir):
    model = tiny_pipeline(seed=0).transformer.eval()

    def run():
        with torch.no_grad():
            return model(**_inputs())[0]

    def load():
        model.load_lora_adapter(str(lora_dir), weight_name="pytorch_lora_weights.safetensors", adapter_name="x",
                                prefix=None)

    stock = run()
    exact = XAttentionConfig(block_size=16, stride=4, threshold=1.0, warmup_steps=0)
    sparse = XAttentionConfig(block_size=16, stride=4, threshold=0.7, warmup_steps=0)
    if lora_first:
        load()
        stock_lora = run()
        apply_xattention(model, exact)
        assert torch.equal(run(), stock_lora)  # the LoRA acts through our processors, bit for bit at tau = 1
        runtime = apply_xattention(model, sparse)
        with_lora = run()
        assert {c.reason for c in runtime.record.calls} == {"estimated"}
        remove_xattention(model)
        assert torch.equal(run(), stock_lora)
        model.delete_adapters("x")
        assert torch.equal(run(), stock)
        apply_xattention(model, sparse)
        assert not torch.allclose(run(), with_lora, atol=1e-3)  # with LoRA != without
    else:
        apply_xattention(model, sparse)
        without = run()
        load()
        with_lora = run()
        assert not torch.allclose(with_lora, without, atol=1e-3)
        apply_xattention(model, exact)
        exact_lora = run()
        remove_xattention(model)
        assert torch.equal(run(), exact_lora)  # stock + LoRA = tau = 1 + LoRA
        model.delete_adapters("x")
        assert torch.equal(run(), stock)


# -- determinism --------------------------------------------------------------------------------------------

def test_fixed_seed_gives_identical_masks_and_videos(pipe, monkeypatch):
    """Two sparse generations from one seed: the same estimated masks call by call, the same run record and the
    same decoded frames, bit for bit (CPU)."""
    masks: list = []
    estimate = runtime_module.xattention_mask

    def recording(*args, **kwargs):
        mask = estimate(*args, **kwargs)
        masks.append(mask.to_dense())
        return mask

    monkeypatch.setattr(runtime_module, "xattention_mask", recording)
    runtime = apply_xattention(pipe, CFG)
    try:
        runs = []
        for _ in range(2):
            masks.clear()
            frames = generate(pipe, steps=4, output_type="pt")
            runs.append((frames, list(masks), [c.key() for c in runtime.record.calls]))
    finally:
        remove_xattention(pipe)
    (f1, m1, k1), (f2, m2, k2) = runs
    assert len(m1) == 8 and len(m1) == len(m2)  # steps 2 and 3, 4 layers
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))
    assert any(not bool(m.all()) for m in m1)  # really sparse masks
    assert k1 == k2
    assert torch.equal(f1, f2)
