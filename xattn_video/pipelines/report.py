"""Moved to ``xattn_video.report`` (its own package, with the typed schema); this name keeps old imports working."""

from ..report.writer import *  # noqa: F401,F403
