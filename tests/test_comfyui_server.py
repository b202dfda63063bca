"""A real ComfyUI server (headless, CPU) with the node folder installed runs the proxy pipeline workflow through
its HTTP API; errors from the nodes reach the user. Everything ComfyUI writes goes to a temporary folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from comfyui_env import NODE_FOLDER, WORKFLOWS, require_comfyui

COMFY = require_comfyui()

import requests  # noqa: E402  (checked by require_comfyui)
from PIL import Image  # noqa: E402

START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


class Server:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "server.log"
        (base / "custom_nodes").mkdir(parents=True)
        # the documented install step: link the node folder into custom_nodes
        (base / "custom_nodes" / "comfyui_xattn").symlink_to(NODE_FOLDER, target_is_directory=True)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'comfyui.db'}",
               "--disable-auto-launch"]
        self.log_file = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFY, env=env, stdout=self.log_file, stderr=subprocess.STDOUT)

    def tail(self, n: int = 60) -> str:
        self.log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.tail()}")

    def run(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """Queue ``prompt`` (API format) and return its /history entry once it has finished."""
        r = requests.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": str(uuid.uuid4())}, timeout=30)
        assert r.ok, f"/prompt refused the workflow: {r.status_code} {r.text}\n{self.tail()}"
        prompt_id = r.json()["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            h = requests.get(f"{self.url}/history/{prompt_id}", timeout=10).json()
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                if h[prompt_id]["status"].get("status_str") in ("success", "error"):
                    return h[prompt_id]
            if self.proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.5)
        pytest.fail(f"the workflow did not finish within {RUN_TIMEOUT_S} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log_file.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    before = _tree(COMFY)
    srv = Server(tmp_path_factory.mktemp("comfyui"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert _tree(COMFY) == before, "the server wrote into the read-only ComfyUI snapshot"


def test_nodes_are_served(server):
    info = requests.get(f"{server.url}/object_info", timeout=30).json()
    for name in ("XAttentionHunyuanVideo", "XAttentionLoadPipeline", "XAttentionConfig", "XAttentionApply",
                 "XAttentionSample", "XAttentionCompare"):
        assert name in info, f"{name} is not registered:\n{server.tail()}"
        assert info[name]["category"] == "xattention"
    assert info["XAttentionHunyuanVideo"]["display_name"] == "XAttention (HunyuanVideo / Wan)"
    assert info["XAttentionCompare"]["output_node"] is True
    assert info["XAttentionSample"]["output"] == ["IMAGE"]


def test_proxy_pipeline_workflow(server):
    workflow = json.loads((WORKFLOWS / "xattn_pipeline_proxy_api.json").read_text())
    assert workflow["1"]["inputs"]["model"] == "proxy"
    workflow["1"]["inputs"]["device"] = "cpu"
    for node in ("4", "6"):  # fewer steps than the example's 20 keep the test short; warmup 2 still leaves sparse
        workflow[node]["inputs"]["steps"] = 4
    entry = server.run(workflow)
    assert entry["status"]["status_str"] == "success", f"{entry['status']}\n{server.tail()}"
    outputs = entry["outputs"]
    sample = workflow["4"]["inputs"]

    (saved,) = outputs["5"]["images"]
    webp = server.base / "output" / saved["subfolder"] / saved["filename"]
    with Image.open(webp) as im:
        assert im.size == (sample["width"], sample["height"])
        assert im.n_frames == sample["num_frames"]

    summary = outputs["6"]["text"][0]
    assert "speedup" in summary and "PSNR" in summary
    (numbers,) = outputs["6"]["xattn_report"]
    assert numbers["speedup_end_to_end"] > 0
    assert 0 < numbers["mean_density"] < 1  # XAttention really skipped blocks after warmup
    assert numbers["identical"] is False
    compare_dir = server.base / "output" / workflow["6"]["inputs"]["out_dir"]
    assert (compare_dir / "dense.mp4").is_file() and (compare_dir / "sparse.mp4").is_file()


def test_node_errors_reach_the_user(server):
    bad = {
        "1": {"class_type": "XAttentionLoadPipeline", "inputs": {"model": "/no/such/hunyuan_folder",
                                                                 "device": "cpu", "dtype": "auto"}},
        "2": {"class_type": "XAttentionSample", "inputs": {"pipe": ["1", 0], "prompt": "x", "num_frames": 5,
                                                           "height": 64, "width": 64, "steps": 1, "seed": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    entry = server.run(bad)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "/no/such/hunyuan_folder" in errors[0]["exception_message"], entry["status"]
