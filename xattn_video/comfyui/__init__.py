"""ComfyUI nodes for xattn-video (see ``nodes.py``); importing this needs neither ComfyUI nor diffusers.

ComfyUI loads them through the thin ``comfyui_xattn`` folder at the repository root, which re-exports
``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
