"""Linear layers in float8: e4m3 weights with one scale per output channel, activations quantized per row.

Once attention is sparse, a video transformer's step is bound by its matrix products (Wan 2.1 14B at 720p: about
4 s of a 6.5 s step at density 0.3). ``quantize_linears_fp8`` swaps a model's ``nn.Linear`` layers for
``Float8Linear``: the weight is rounded to e4m3 once, with one scale per output channel; each call scales every
row of its input by its own max, rounds it to e4m3, and runs ``torch._scaled_mm`` (fp8 tensor cores on Hopper and
Ada; a slow path on the CPU), adding the bias and returning the input's dtype. Eagerly the per-row
quantization costs a few passes over the activations, about what the fp8 product saves; under ``torch.compile``
(``transformer.compile_repeated_blocks()``) inductor fuses it into the operation before, and the product is
what is left (measured in ``benchmarks/RESULTS.md``). Opt-in, and an approximation: judge it on your model.

Example::

    from xattn_video import apply_xattention, quantize_linears_fp8
    from xattn_video.config import load_config
    n = quantize_linears_fp8(pipe.transformer)   # every eligible linear layer; the embedders stay as they are
    apply_xattention(pipe, load_config("wan_720p_8bit"))
    pipe.transformer.compile_repeated_blocks()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .kernels.reference import FP8, FP8_MAX

_TINY = 1e-12  # a scale for an all-zero row: its values quantize to 0 instead of 0 / 0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ([M, K]) in e4m3 with one float32 scale per row ([M, 1]): ``x ≈ x_fp8.float() * scale``."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp_min(_TINY)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def float8_linear(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W ≈ weight_fp8 * weight_scale.T`` ([N, K] e4m3, [1, N] float32), ``x`` quantized
    per row, on the fp8 matrix product; the result in ``x``'s dtype and shape (``[..., N]``)."""
    rows = x.reshape(-1, x.shape[-1])
    x_fp8, x_scale = quantize_rows(rows)
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    out = torch._scaled_mm(x_fp8, weight_fp8.t(), scale_a=x_scale, scale_b=weight_scale,
                           bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return out.to(x.dtype).reshape(*x.shape[:-1], weight_fp8.shape[0])


def float8_linear_reference(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                            bias: torch.Tensor | None) -> torch.Tensor:
    """The plain-PyTorch twin of ``float8_linear``: the same rounding of ``x``, the product in float32."""
    x_fp8, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
    out = (x_fp8.float() * x_scale) @ (weight_fp8.float() * weight_scale.reshape(-1, 1)).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], weight_fp8.shape[0])


class Float8Linear(nn.Module):
    """A linear layer whose weight is stored in e4m3 (one scale per output channel) and whose product runs in fp8.

    There is no ``weight`` attribute on purpose: code that reads a layer's ``weight`` (its dtype, to fuse
    projections) fails loudly instead of getting e4m3 values.

    Example::

        layer = Float8Linear.from_linear(nn.Linear(64, 32, dtype=torch.bfloat16))
        y = layer(torch.randn(5, 64, dtype=torch.bfloat16))   # [5, 32] bfloat16
    """

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_fp8.shape[1], weight_fp8.shape[0]
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        """The layer's weight rounded to e4m3 per output channel; its bias kept in its dtype."""
        if not fits(linear):
            raise ValueError(f"Float8Linear needs in_features and out_features divisible by 16 (fp8 products); "
                             f"got {linear.in_features} x {linear.out_features}")
        with torch.no_grad():
            weight_fp8, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(weight_fp8, scale.reshape(1, -1), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float8_linear(x, self.weight_fp8, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def fits(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` that the fp8 product takes (both sides divisible by 16)."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def quantize_linears_fp8(model: nn.Module, skip: Sequence[str] = ("embedder",)) -> int:
    """Replace every ``nn.Linear`` of ``model`` whose sides are divisible by 16 by a ``Float8Linear``, in place,
    except those whose qualified name contains one of ``skip``; return how many were replaced. A GPU without fp8
    tensor cores (compute capability below 8.9) is a ``ValueError``; the CPU runs the same op, slowly.

    The default skips diffusers' condition embedders: they run once a step on a few hundred tokens (nothing to
    gain) and see text padded with zero rows. Call it after moving the model to its device and dtype (``.to(dtype)``
    would turn the e4m3 weights into that dtype), before ``apply_xattention`` and before compiling.

    Example::

        n = quantize_linears_fp8(pipe.transformer)
        print(f"{n} linear layers in float8")
    """
    if isinstance(skip, str):
        raise TypeError(f"skip must be a sequence of name parts, not the string {skip!r}: use ({skip!r},)")
    targets = [(name, m) for name, m in model.named_modules()  # name "": the model itself, not replaceable in place
               if name and fits(m) and not any(part in name for part in skip)]
    if targets:
        from .kernels.quantize import require_fp8_tensor_cores

        require_fp8_tensor_cores(targets[0][1].weight.device, "quantize_linears_fp8",
                                 instead="the model's own linear layers (do not quantize them)")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, Float8Linear.from_linear(linear))
    return len(targets)
