"""One backend dispatch: every fast path and its PyTorch twin share one signature and are chosen in one place."""

import inspect

import pytest
import torch

from xattn_video.backends import KERNELS, kernel, resolve_backend
from xattn_video.config import OpConfig
from xattn_video.kernels import reference


@pytest.mark.parametrize("op,backend", [(op, b) for op in sorted(KERNELS) for b in KERNELS[op] if b != "reference"])
def test_twins_share_one_signature(op, backend):
    fast = inspect.signature(kernel(op, backend)).parameters
    twin = inspect.signature(kernel(op, "reference")).parameters
    kw = inspect.Parameter.KEYWORD_ONLY
    shared = [n for n in twin if n in fast]
    # the same parameters in the same order, kinds and defaults ...
    assert [(n, twin[n].kind, twin[n].default) for n in shared] == [(n, fast[n].kind, fast[n].default) for n in shared]
    assert [n for n in twin if twin[n].kind != kw] == [n for n in fast if fast[n].kind != kw]
    # ... and whatever only one side has is a keyword-only launch / tuning option with a default
    for params in (fast, twin):
        for name in set(params) - set(shared):
            assert params[name].kind == kw and params[name].default is not inspect.Parameter.empty, (op, name)


def test_twins_live_with_the_other_references():
    assert kernel("select", "reference") is reference.select_blocks_reference
    assert all(KERNELS[op]["reference"].startswith("reference:") for op in KERNELS)
    assert kernel("scores", "sdpa") is reference.strided_block_scores_reference  # sdpa differs in the attention only


def test_dispatch_names_bad_values():
    with pytest.raises(ValueError, match="op='sort' is not one of"):
        kernel("sort", "reference")
    with pytest.raises(ValueError, match="backend='auto' is not one of"):
        kernel("attend", "auto")
    cpu = torch.zeros(1, 1, 4, 64)
    assert resolve_backend(OpConfig(), cpu) == "sdpa"  # CPU inputs, native precision
    assert resolve_backend(OpConfig(precision="int8-fp8"), cpu) == "reference"  # the 8-bit emulation
    assert resolve_backend(OpConfig(backend="reference"), cpu) == "reference"
    with pytest.raises(ValueError, match="backend='sdpa' runs native precision only"):
        OpConfig(backend="sdpa", precision="fp8")
