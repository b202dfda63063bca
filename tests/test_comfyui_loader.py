"""ComfyUI's own custom-node loader imports the node folder and registers every node; the package imports
without ComfyUI; the example workflows only use nodes that exist."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

from comfyui_env import NODE_FOLDER, REPO, WORKFLOWS, import_comfy

COMFY = import_comfy()

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's nodes.py)

from xattn_video.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

# the ComfyUI nodes the example workflows use that live in comfy_extras (loaded at server start-up)
EXTRAS = ("nodes_hunyuan.py", "nodes_flux.py", "nodes_model_advanced.py", "nodes_images.py")


def test_comfy_loader_registers_every_node(tmp_path):
    custom = tmp_path / "custom_nodes"
    shutil.copytree(NODE_FOLDER, custom / "comfyui_xattn")  # what a user's copy/link gives
    ok = asyncio.run(comfy_nodes.load_custom_node(str(custom / "comfyui_xattn")))
    assert ok
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert comfy_nodes.NODE_CLASS_MAPPINGS[name] is cls
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[name] == NODE_DISPLAY_NAME_MAPPINGS[name]
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert NODE_DISPLAY_NAME_MAPPINGS["XAttentionHunyuanVideo"] == "XAttention (HunyuanVideo / Wan)"
    assert NODE_CLASS_MAPPINGS["XAttentionCompare"].OUTPUT_NODE is True


def test_package_imports_without_comfyui_or_diffusers():
    code = ("import sys; import comfyui_xattn, xattn_video.comfyui.nodes; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'diffusers', 'folder_paths')]; "
            "assert not bad, bad; print(len(comfyui_xattn.NODE_CLASS_MAPPINGS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(NODE_CLASS_MAPPINGS))


def test_workflows_use_registered_nodes():
    files = sorted(WORKFLOWS.glob("*.json"))
    assert len(files) >= 2
    for extra in EXTRAS:
        assert asyncio.run(comfy_nodes.load_custom_node(str(COMFY / "comfy_extras" / extra),
                                                        module_parent="comfy_extras")), extra
    known = set(NODE_CLASS_MAPPINGS) | set(comfy_nodes.NODE_CLASS_MAPPINGS)
    for f in files:
        graph = json.loads(f.read_text())
        for node_id, node in graph.items():
            assert node["class_type"] in known, (f.name, node_id, node["class_type"])
            for value in node["inputs"].values():
                if isinstance(value, list):  # a link: [source node id, output index]
                    assert value[0] in graph, (f.name, node_id, value)
