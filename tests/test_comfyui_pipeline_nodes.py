"""The pipeline nodes called directly (no ComfyUI needed): IMAGE outputs, the shared pipeline left dense,
the compare report, and errors that name the bad value."""

from __future__ import annotations

import json

import pytest
import torch

from xattn_video.comfyui.nodes import (
    XAttentionApply,
    XAttentionCompare,
    XAttentionConfigNode,
    XAttentionLoadPipeline,
    XAttentionSample,
    XAttnPipe,
)

SIZES = dict(num_frames=5, height=64, width=64, steps=2, seed=0)


@pytest.fixture(scope="module")
def tiny_pipe() -> XAttnPipe:
    return XAttentionLoadPipeline().load("tiny", "cpu", "float32")[0]


def test_pipeline_nodes_return_images(tiny_pipe):
    (config,) = XAttentionConfigNode().build(threshold=0.5, stride=4, block_size=16, warmup_steps=1,
                                             max_density=0.0, keep_text=True, dense_layers="0", backend="auto")
    assert config.dense_layers == (0,) and config.max_density is None
    (sparse_pipe,) = XAttentionApply().apply(tiny_pipe, config)
    assert tiny_pipe.config is None and sparse_pipe.pipe is tiny_pipe.pipe
    (dense,) = XAttentionSample().sample(tiny_pipe, "a cat", **SIZES)
    (sparse,) = XAttentionSample().sample(sparse_pipe, "a cat", **SIZES)
    for img in (dense, sparse):
        assert isinstance(img, torch.Tensor) and img.dtype == torch.float32
        assert img.shape == (5, 64, 64, 3)
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert not torch.equal(dense, sparse)
    # sampling with XAttention left the shared pipeline dense
    (dense_again,) = XAttentionSample().sample(tiny_pipe, "a cat", **SIZES)
    torch.testing.assert_close(dense_again, dense)


def test_compare_node_reports(tiny_pipe):
    (config,) = XAttentionConfigNode().build(threshold=0.5, stride=4, block_size=16, warmup_steps=1,
                                             max_density=0.0, keep_text=True)
    out = XAttentionCompare().compare(tiny_pipe, "a cat", config=config, **SIZES)
    dense, sparse, report_json = out["result"]
    assert dense.shape == sparse.shape == (5, 64, 64, 3)
    report = json.loads(report_json)
    assert report["timing"]["speedup_end_to_end"] > 0
    assert "speedup" in out["ui"]["text"][0] and "PSNR" in out["ui"]["text"][0]
    json.dumps(out["ui"], allow_nan=False)  # the server sends it as strict JSON


def test_bad_inputs_name_the_value(tiny_pipe, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises((FileNotFoundError, ValueError), match="no_such_model"):
        XAttentionLoadPipeline().load(str(missing), "cpu", "float32")
    for tau in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"threshold={tau}"):
            XAttentionConfigNode().build(threshold=tau, stride=4, block_size=16, warmup_steps=0, max_density=0.0,
                                         keep_text=True)
    (config,) = XAttentionConfigNode().build(threshold=0.9, stride=4, block_size=64, warmup_steps=0,
                                             max_density=0.0, keep_text=True, precision="int8-fp8")
    assert config.op.precision == "int8-fp8"
    assert "int8-fp8" in XAttentionConfigNode.INPUT_TYPES()["optional"]["precision"][0]
    with pytest.raises(ValueError, match="precision='fp4'"):
        XAttentionConfigNode().build(threshold=0.9, stride=4, block_size=16, warmup_steps=0, max_density=0.0,
                                     keep_text=True, precision="fp4")
    with pytest.raises(ValueError, match="dense_layers entry 'x'"):
        XAttentionConfigNode().build(threshold=0.9, stride=4, block_size=16, warmup_steps=0, max_density=0.0,
                                     keep_text=True, dense_layers="1, x")
    with pytest.raises(ValueError, match="num_frames=6"):
        XAttentionSample().sample(tiny_pipe, "a cat", num_frames=6, height=64, width=64, steps=1, seed=0)
    with pytest.raises(ValueError, match="no XAttention config"):
        XAttentionCompare().compare(tiny_pipe, "a cat", **SIZES)
