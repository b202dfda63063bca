"""Float8 linear layers: the fp8 product against its float32 twin on fresh random inputs, against the bf16
layer it replaces, zero rows, the layers replaced in a tiny Wan model (embedders kept), and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xattn_video import XAttentionConfig, apply_xattention, quantize_linears_fp8
from xattn_video.fp8_linear import Float8Linear, float8_linear, float8_linear_reference, quantize_rows

from test_models import tiny_wan, wan_inputs


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("lead", [(7,), (2, 13), (3, 1, 33)])
@pytest.mark.parametrize("features", [(32, 48), (80, 16)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_product_matches_its_twin(lead, features, dtype, bias):
    k, n = features
    g = torch.Generator().manual_seed(hash((lead, features, bias)) % 2**31)
    linear = nn.Linear(k, n, bias=bias, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g))  # rows of other scales
    layer = Float8Linear.from_linear(linear)
    x = (torch.randn(*lead, k, generator=g) * 3 * torch.rand(*lead, 1, generator=g)).to(dtype)
    out = layer(x)
    twin = float8_linear_reference(x, layer.weight_fp8, layer.weight_scale, layer.bias)
    assert out.shape == (*lead, n) and out.dtype == dtype
    assert rel(out, twin) < 1e-2  # the product's bf16 result against float32: rounding only
    assert 1e-3 < rel(out, linear(x)) < 0.08  # e4m3 keeps 3 mantissa bits: a few per cent, never exact


def test_rows_quantize_to_their_own_scale_and_zero_rows_stay_zero():
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 30.0, 0.0, 1e3]).reshape(5, 1)
    x_fp8, scale = quantize_rows(x)
    assert x_fp8.dtype == torch.float8_e4m3fn and scale.shape == (5, 1)
    assert x_fp8.float().abs().amax(dim=1)[[0, 1, 2, 4]].eq(448).all()  # each row uses the whole e4m3 range
    back = x_fp8.float() * scale
    assert torch.isfinite(back).all() and back[3].eq(0).all()
    assert rel(back, x) < 0.05
    layer = Float8Linear.from_linear(nn.Linear(64, 16))
    y = layer(x)
    assert torch.isfinite(y).all() and torch.allclose(y[3].float(), layer.bias.float(), atol=1e-2)


def test_fp8_product_is_the_function_the_layer_calls():
    layer = Float8Linear.from_linear(nn.Linear(48, 32, dtype=torch.bfloat16))
    x = torch.randn(9, 48, dtype=torch.bfloat16)
    assert torch.equal(layer(x), float8_linear(x, layer.weight_fp8, layer.weight_scale, layer.bias))
    assert not hasattr(layer, "weight")  # code reading .weight fails loudly instead of seeing e4m3


def test_quantize_linears_replaces_the_blocks_and_keeps_the_embedders():
    model = tiny_wan()
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "embedder" not in n
                and m.in_features % 16 == 0 and m.out_features % 16 == 0]
    inputs = wan_inputs()
    with torch.no_grad():
        before = model(**inputs)[0]
    assert quantize_linears_fp8(model) == len(expected) > 8
    kinds = dict(model.named_modules())
    assert all(isinstance(kinds[n], Float8Linear) for n in expected)
    assert all(isinstance(m, nn.Linear) for n, m in kinds.items() if "embedder" in n and hasattr(m, "weight"))
    apply_xattention(model, XAttentionConfig(threshold=1.0, warmup_steps=0, backend="reference"))
    with torch.no_grad():
        after = model(**inputs)[0]
    assert torch.isfinite(after).all()
    assert 1e-4 < rel(after, before) < 0.1


def test_quantized_model_compiles_to_the_same_output():
    model = tiny_wan()
    quantize_linears_fp8(model)
    inputs = wan_inputs()
    with torch.no_grad():
        eager = model(**inputs)[0]
        model.compile_repeated_blocks(backend="aot_eager")
        compiled = model(**inputs)[0]
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-5)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="divisible by 16.*got 20 x 16"):
        Float8Linear.from_linear(nn.Linear(20, 16))
    with pytest.raises(TypeError, match="not the string 'embedder'"):
        quantize_linears_fp8(nn.Sequential(nn.Linear(16, 16)), skip="embedder")
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 17))
    assert quantize_linears_fp8(model) == 1  # 17 outputs: left as is
    assert isinstance(model[0], Float8Linear) and isinstance(model[1], nn.Linear)


def test_a_gpu_without_fp8_tensor_cores_is_refused_before_any_change(monkeypatch):
    import xattn_video.kernels.quantize as quantize

    real = quantize.require_fp8_tensor_cores
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    # the model's weights as if on that GPU (this machine has none)
    monkeypatch.setattr(quantize, "require_fp8_tensor_cores",
                        lambda device, what, instead: real(torch.device("cuda"), what, instead))
    model = nn.Sequential(nn.Linear(16, 16))
    with pytest.raises(ValueError, match="quantize_linears_fp8 needs fp8 tensor cores.*8.0; accepted here: the model"):
        quantize_linears_fp8(model)
    assert isinstance(model[0], nn.Linear), "nothing replaced"
