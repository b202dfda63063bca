"""Shared set-up for the ComfyUI tests: find the vendored ComfyUI, check its requirements, import it on CPU.

The ComfyUI snapshot is read-only: nothing here writes into it (no bytecode, no user/output folders).
Set ``XATTN_COMFYUI_DIR`` to use another ComfyUI checkout.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODE_FOLDER = REPO / "comfyui_xattn"
WORKFLOWS = REPO / "xattn_video" / "comfyui" / "workflows"

# modules ComfyUI imports at start-up (requirements.txt minus torch/torchaudio) and the HTTP client of the tests
REQUIRED_MODULES = ("torchvision", "torchsde", "einops", "safetensors", "aiohttp", "yarl", "alembic", "sqlalchemy",
                    "av", "scipy", "psutil", "PIL", "comfyui_frontend_package", "requests")


def comfyui_dir() -> Path | None:
    candidates = [os.environ.get("XATTN_COMFYUI_DIR"), REPO / "shared" / "vendor" / "ComfyUI",
                  REPO.parent / "shared" / "vendor" / "ComfyUI"]
    for c in candidates:
        if c and (Path(c) / "main.py").is_file() and (Path(c) / "comfy").is_dir():
            return Path(c)
    return None


def missing_requirements() -> list[str]:
    return [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]


def require_comfyui() -> Path:
    """The ComfyUI folder, or skip the calling test module with the reason."""
    missing = missing_requirements()
    if missing:
        pytest.skip(f"ComfyUI's requirements cannot be imported (missing: {', '.join(missing)}); "
                    "pip install -r requirements-comfyui.txt", allow_module_level=True)
    path = comfyui_dir()
    if path is None:
        pytest.skip("no ComfyUI snapshot found (shared/vendor/ComfyUI or $XATTN_COMFYUI_DIR)",
                    allow_module_level=True)
    return path


def import_comfy() -> Path:
    """Put ComfyUI on sys.path and import its core on CPU (model_management reads args.cpu at import)."""
    path = require_comfyui()
    sys.dont_write_bytecode = True  # the snapshot is read-only: no __pycache__ in it
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import utils.install_util  # noqa: F401  ComfyUI's utils package, before nodes.py puts comfy/ (with utils.py) first

    return path


def random_model(config, model_class, peaked_norms: tuple[str, ...]):
    """A ComfyUI ``ModelPatcher`` on the CPU in float32 around ``model_class(config)`` with random weights
    (ComfyUI's layers skip weight init: every weight gets a value, seed 0), the QK-norm scales whose names end
    with ``peaked_norms`` set to 4: peaked, position-dependent attention like a trained model's."""
    import comfy.model_patcher
    import torch

    cpu = torch.device("cpu")
    config.set_inference_dtype(torch.float32, None)
    base = model_class(config, device=cpu)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            p.normal_(0.0, 0.15 if p.dim() > 1 else 0.02)
            if name.endswith(peaked_norms):
                p.fill_(4.0)
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)

