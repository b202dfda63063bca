"""The package logger and ``log_once``: a fallback or an ignored setting is said once per process, not per call.

Example::

    from xattn_video.log import log_once
    log_once("xattn_video: backend='auto' uses the PyTorch reference on the GPU (head_dim=96)")
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("xattn_video")


@functools.lru_cache(maxsize=None)
def log_once(message: str) -> None:
    """Log ``message`` as a warning the first time it is seen in this process."""
    logger.warning(message)
