"""The local diffusers folders the loader (CLI, ``load_pipeline``, ComfyUI pipeline nodes) runs: the pipeline class
named by the folder's ``model_index.json`` (``_class_name``) picks what the folder must hold, the preset and the
video size it is meant for.

| ``_class_name`` | model | preset | default video |
|---|---|---|---|
| ``HunyuanVideoPipeline`` | HunyuanVideo | ``hunyuan_720p_quality`` | 129 x 720 x 1280, 50 steps |
| ``WanPipeline`` | Wan 2.1; Wan 2.2 (``transformer_2``) | ``wan_720p`` | 81 x 720 x 1280, 50 steps |
| ``HunyuanVideo15Pipeline`` | HunyuanVideo 1.5 | ``hunyuan15_720p`` | 121 x 720 x 1280, 50 steps |

The subfolders each folder must hold are ``FolderKind.subfolders`` (plus Wan 2.2's ``transformer_2`` when the
index names it). Image-to-video pipelines (``PYTHON_API_ONLY``) need an image, which the CLI does not take: their
folders are refused with a pointer to ``apply_xattention``. Nothing is downloaded.

Example::

    kind = folder_kind("/models/Wan2.1-T2V-1.3B-Diffusers")   # ValueError naming what is wrong otherwise
    kind.class_name, kind.preset                               # ('WanPipeline', 'wan_720p')
    pipe = load_folder("/models/Wan2.1-T2V-1.3B-Diffusers", device="cuda", dtype=torch.bfloat16)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_SIZE_720P = {"height": 720, "width": 1280, "num_inference_steps": 50}


@dataclass(frozen=True)
class FolderKind:
    """One pipeline class the loader runs.

    Attributes:
        class_name: the diffusers pipeline class, as ``model_index.json`` names it.
        model: the model family, for messages.
        subfolders: the components the folder must hold.
        optional: components required only when ``model_index.json`` names a class for them.
        preset: the config preset used when the user names none.
        defaults: ``num_frames``, ``height``, ``width``, ``num_inference_steps`` used when the user gives none.
        float32: components loaded in float32 whatever the dtype (Wan's VAE, as diffusers' Wan examples do).
    """

    class_name: str
    model: str
    subfolders: tuple[str, ...]
    preset: str
    defaults: dict[str, int]
    optional: tuple[str, ...] = ()
    float32: tuple[str, ...] = ()


FOLDER_KINDS: dict[str, FolderKind] = {k.class_name: k for k in (
    FolderKind("HunyuanVideoPipeline", "HunyuanVideo",
               ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
               "hunyuan_720p_quality", {"num_frames": 129, **_SIZE_720P}),
    FolderKind("WanPipeline", "Wan 2.1 / 2.2", ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
               "wan_720p", {"num_frames": 81, **_SIZE_720P}, optional=("transformer_2",), float32=("vae",)),
    FolderKind("HunyuanVideo15Pipeline", "HunyuanVideo 1.5",
               ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
                "guider"),
               "hunyuan15_720p", {"num_frames": 121, **_SIZE_720P}),
)}

# pipelines whose transformers XAttention supports (apply_xattention), but that need an image the loader has not
PYTHON_API_ONLY = {"WanImageToVideoPipeline": "Wan 2.1 / 2.2 image-to-video",
                   "HunyuanVideo15ImageToVideoPipeline": "HunyuanVideo 1.5 image-to-video"}


def _read_index(path: Path) -> dict[str, Any]:
    index = path / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"model folder {str(path)!r} has no readable model_index.json ({e.__class__.__name__}): "
                         "expected a local diffusers folder") from None
    if not isinstance(data, dict):
        raise ValueError(f"model folder {str(path)!r}: model_index.json is not a JSON object")
    return data


def folder_kind(model: str | Path) -> FolderKind:
    """The ``FolderKind`` of a local diffusers folder, after checking that it exists, names an accepted
    pipeline class and holds that class's subfolders.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no ``model_index.json``, an unaccepted ``_class_name`` or a missing subfolder; the one-line
            message names the bad value and what is accepted.

    Example::

        folder_kind("/models/HunyuanVideo-1.5-Diffusers-720p_t2v").preset    # 'hunyuan15_720p'
    """
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist (give a local diffusers folder of "
                                f"{accepted()}, or omit --model for the embedded proxy model)")
    if not (path / "model_index.json").is_file():
        raise ValueError(f"model folder {str(path)!r} is incomplete: missing model_index.json (expected a local "
                         f"diffusers folder of {accepted()})")
    index = _read_index(path)
    name = index.get("_class_name")
    if name is None:
        raise ValueError(f"model folder {str(path)!r}: its model_index.json names no _class_name; accepted: "
                         f"{accepted()}")
    if name in PYTHON_API_ONLY:
        raise ValueError(f"model folder {str(path)!r} holds a {name} ({PYTHON_API_ONLY[name]}, which needs an "
                         f"image): this loader runs {accepted()}; load it with diffusers and call "
                         "xattn_video.apply_xattention(pipe, config) (see the README)")
    if name not in FOLDER_KINDS:
        raise ValueError(f"model folder {str(path)!r} holds a {name}; accepted: {accepted()}")
    kind = FOLDER_KINDS[name]
    named = [c for c in kind.optional if isinstance(index.get(c), list) and index[c] and index[c][0] is not None]
    missing = [c for c in (*kind.subfolders, *named) if not (path / c).is_dir()]
    if missing:
        raise ValueError(f"model folder {str(path)!r} is incomplete: missing {', '.join(missing)} "
                         f"(a {name} folder holds {', '.join((*kind.subfolders, *kind.optional))})")
    return kind


def accepted() -> str:
    """The accepted pipeline classes, for messages."""
    return ", ".join(f"{k.class_name} ({k.model})" for k in FOLDER_KINDS.values())


def load_folder(model: str | Path, device: str | torch.device, dtype: torch.dtype) -> Any:
    """The pipeline of a local diffusers folder (checked by ``folder_kind``), on ``device`` in ``dtype``, with
    VAE tiling on; nothing is downloaded. Reports name it ``"<folder> (<class name>)"``.

    Example::

        pipe = load_folder("/models/Wan2.2-T2V-A14B-Diffusers", torch.device("cuda"), torch.bfloat16)
        pipe.transformer_2 is not None                     # Wan 2.2's low-noise expert
    """
    import diffusers

    kind = folder_kind(model)
    dtypes = {"default": dtype, **{c: torch.float32 for c in kind.float32}}
    pipe = getattr(diffusers, kind.class_name).from_pretrained(model, dtype=dtypes, local_files_only=True)
    pipe.vae.enable_tiling()
    pipe.to(device)
    pipe.xattn_model_name = f"{model} ({kind.class_name})"
    return pipe


def video_size_multiples(pipe: Any) -> tuple[int, int]:
    """``(t, s)``: a video this pipeline makes has ``t·k + 1`` frames and a height and width that are multiples
    of ``s`` (the VAE's compression times the transformer's patch size).

    Example::

        video_size_multiples(wan_pipe)          # (4, 16): the VAE packs 4 frames and 8 x 8 pixels, patches 2 x 2
    """
    patch = getattr(pipe.transformer.config, "patch_size", 1)
    patch = max(patch[1:]) if isinstance(patch, (tuple, list)) else patch
    return int(pipe.vae_scale_factor_temporal), int(pipe.vae_scale_factor_spatial) * int(patch)
