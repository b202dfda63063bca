"""xattn-video: XAttention block-sparse attention for video diffusion transformers.

Example::

    from xattn_video import XAttentionConfig, apply_xattention
    apply_xattention(pipe, XAttentionConfig(threshold=0.9, warmup_steps=5))
    video = pipe(prompt="a cat walks on the grass").frames[0]
"""

from .attention import xattention
from .block_mask import BlockSparseMask
from .config import XAttentionConfig

__all__ = ["XAttentionConfig", "BlockSparseMask", "xattention", "apply_xattention", "remove_xattention"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # processors import diffusers, which is slow: load them only when asked for
    if name in ("apply_xattention", "remove_xattention"):
        from . import processors

        return getattr(processors, name)
    raise AttributeError(f"module 'xattn_video' has no attribute {name!r}")
