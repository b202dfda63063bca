"""ComfyUI custom-node entry for xattn-video.

Install: `pip install -e <repo>` into ComfyUI's Python, then link (or copy) this folder into
`ComfyUI/custom_nodes/`, e.g. `ln -s <repo>/comfyui_xattn ComfyUI/custom_nodes/comfyui_xattn`.
The nodes themselves live in the installed package (`xattn_video.comfyui`); this folder only exports them.
"""

try:
    from xattn_video.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as e:  # say what to do instead of ComfyUI's bare "cannot import" line
    raise ImportError(
        f"comfyui_xattn needs the xattn-video package in ComfyUI's Python environment ({e}); "
        "run `pip install -e <path to the xattn-video repo>` with that Python"
    ) from e

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
