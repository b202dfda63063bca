"""xattn-video: XAttention block-sparse attention for video diffusion transformers.

Example::

    from xattn_video import XAttentionConfig, apply_xattention
    runtime = apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=5))
    video = pipe(prompt="a cat walks on the grass").frames[0]
    runtime.record.mean_density_after_warmup()
"""

from .attention import xattention
from .block_mask import BlockSparseMask
from .config import OpConfig, ScheduleConfig, XAttentionConfig

__all__ = [
    "XAttentionConfig", "OpConfig", "ScheduleConfig", "BlockSparseMask", "xattention", "apply_xattention",
    "remove_xattention", "XAttentionRuntime", "MaskRequest", "quantize_linears_fp8",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # loaded when asked for: the processors and the runtime are not needed to call the op
    if name in ("apply_xattention", "remove_xattention"):
        from . import processors

        return getattr(processors, name)
    if name in ("XAttentionRuntime", "MaskRequest"):
        from . import runtime

        return getattr(runtime, name)
    if name == "quantize_linears_fp8":
        from . import fp8_linear

        return fp8_linear.quantize_linears_fp8
    raise AttributeError(f"module 'xattn_video' has no attribute {name!r}")
