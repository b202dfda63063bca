"""Optional dependencies: which extra provides what, checked before any work starts.

``pip install xattn-video`` is enough for the op, the diffusers processors and the ComfyUI nodes. ``compare``
(and ``xattn-video compare``) also needs the ``metrics`` extra: scikit-image for SSIM, and matplotlib for the
report's plots when it writes a report. Without them, ``require`` fails in one line that says what to
install, before a model is loaded or a video generated.

Example::

    require("ssim", "plots", what="xattn-video compare")
    # MissingExtraError: xattn-video compare needs scikit-image (the 'metrics' extra): pip install 'xattn-video[metrics]'
"""

from __future__ import annotations

import importlib

# feature -> (module to import, package that provides it, extra that installs it)
FEATURES: dict[str, tuple[str, str, str]] = {
    "ssim": ("skimage", "scikit-image", "metrics"),
    "plots": ("matplotlib", "matplotlib", "metrics"),
}


class MissingExtraError(ModuleNotFoundError):
    """A feature needs packages of an extra that is not installed; the message says what to install."""


def missing(*features: str) -> list[tuple[str, str]]:
    """``(package, extra)`` of each feature whose module cannot be imported."""
    absent = []
    for feature in features:
        if feature not in FEATURES:
            raise ValueError(f"feature={feature!r} is not one of {sorted(FEATURES)}")
        module, package, extra = FEATURES[feature]
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append((package, extra))
    return absent


def require(*features: str, what: str) -> None:
    """Raise ``MissingExtraError`` naming the packages and the extra unless every feature is importable."""
    absent = missing(*features)
    if absent:
        extras = sorted({extra for _, extra in absent})
        raise MissingExtraError(
            f"{what} needs {', '.join(p for p, _ in absent)} (the {', '.join(repr(e) for e in extras)} extra): "
            f"pip install 'xattn-video[{','.join(extras)}]'"
        )
