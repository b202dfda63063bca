"""XAttention settings: one dataclass, validated on construction, loadable from YAML.

Example::

    from xattn_video import XAttentionConfig
    cfg = XAttentionConfig(threshold=0.95, warmup_steps=5)
    cfg.save("my.yaml"); assert XAttentionConfig.load("my.yaml") == cfg
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

# A threshold is one float for every layer and head, or a table: {"default": 0.9, "layers": {3: 0.95},
# "heads": {3: [0.9, 0.95, ...]}} (per-head lists are per layer; layers not named use "default").
Threshold = Union[float, Mapping[str, Any]]

BACKENDS = ("auto", "triton", "reference")


def _check_tau(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{where}={value!r} is out of range: a threshold must be a number in (0, 1]")
    return float(value)


@dataclass(frozen=True)
class XAttentionConfig:
    """How XAttention picks and computes blocks.

    Attributes:
        block_size: B, side of the square attention blocks (tokens). 16..256, a multiple of ``stride``.
        stride: S, antidiagonal stride of the estimate; divides ``block_size``. The paper uses 8 or 16.
        threshold: tau in (0, 1]; per query-block row keep the fewest key blocks whose estimated mass reaches
            tau. A float, or a table ``{"default": t, "layers": {i: t}, "heads": {i: [t_h, ...]}}``.
        warmup_steps: the first denoising steps that run dense attention.
        dense_layers: transformer block indices (0-based over double then single blocks) kept dense.
        keep_text: text (global) tokens: their keys are always kept and their queries attend densely.
        keep_diagonal: always keep the diagonal block of each query-block row.
        backend: "triton" (CUDA kernels), "reference" (plain PyTorch) or "auto" (triton on CUDA).
        allow_fallback: with backend="triton", run the reference (logged once) instead of failing when the
            Triton path cannot run.
        mask_reuse_steps: reuse a layer's block mask for this many consecutive sparse steps (1 = re-estimate
            every step).
        max_density: optional cap in (0, 1] on the fraction of key blocks kept per query-block row.
        min_seq_len: sequences shorter than this run dense (estimating them costs more than it saves).
    """

    block_size: int = 128
    stride: int = 16
    threshold: Threshold = 0.9
    warmup_steps: int = 5
    dense_layers: tuple[int, ...] = ()
    keep_text: bool = True
    keep_diagonal: bool = True
    backend: str = "auto"
    allow_fallback: bool = False
    mask_reuse_steps: int = 1
    max_density: float | None = None
    min_seq_len: int = 0

    def __post_init__(self) -> None:
        for name in ("block_size", "stride", "warmup_steps", "mask_reuse_steps", "min_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}={v!r} must be an integer")
        if not 4 <= self.block_size <= 512:
            raise ValueError(f"block_size={self.block_size} is out of range: accepted 4..512")
        if self.stride < 1 or self.block_size % self.stride:
            raise ValueError(
                f"stride={self.stride} must be >= 1 and divide block_size={self.block_size} (e.g. 8 or 16 for 128)"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.mask_reuse_steps < 1:
            raise ValueError(f"mask_reuse_steps={self.mask_reuse_steps} must be >= 1")
        if self.min_seq_len < 0:
            raise ValueError(f"min_seq_len={self.min_seq_len} must be >= 0")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {BACKENDS}")
        if self.max_density is not None:
            if not isinstance(self.max_density, (int, float)) or not 0.0 < float(self.max_density) <= 1.0:
                raise ValueError(f"max_density={self.max_density!r} is out of range: accepted (0, 1] or None")
            object.__setattr__(self, "max_density", float(self.max_density))
        layers = tuple(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"dense_layers={self.dense_layers!r} must be non-negative block indices")
        object.__setattr__(self, "dense_layers", layers)
        object.__setattr__(self, "threshold", _normalise_threshold(self.threshold))

    # -- thresholds ---------------------------------------------------------------------------------------
    def threshold_for(self, layer: int | None, num_heads: int) -> float | list[float]:
        """The threshold(s) of one layer: a float, or one float per head."""
        t = self.threshold
        if not isinstance(t, Mapping):
            return t
        if layer is not None and layer in t["heads"]:
            per_head = list(t["heads"][layer])
            if len(per_head) != num_heads:
                raise ValueError(
                    f"threshold table: layer {layer} has {len(per_head)} per-head thresholds, the model has "
                    f"{num_heads} heads"
                )
            return per_head
        if layer is not None and layer in t["layers"]:
            return t["layers"][layer]
        return t["default"]

    def is_dense_everywhere(self) -> bool:
        """True when the config keeps every block (tau = 1 everywhere and no density cap)."""
        t = self.threshold
        values = [t] if not isinstance(t, Mapping) else (
            [t["default"], *t["layers"].values(), *(x for h in t["heads"].values() for x in h)]
        )
        return self.max_density is None and all(v >= 1.0 for v in values)

    # -- YAML ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        if isinstance(self.threshold, Mapping):
            d["threshold"] = {
                "default": self.threshold["default"],
                "layers": dict(self.threshold["layers"]),
                "heads": {k: list(v) for k, v in self.threshold["heads"].items()},
            }
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "XAttentionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown XAttention config key(s) {unknown}; accepted: {sorted(known)}")
        return cls(**dict(data))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "XAttentionConfig":
        """Read a YAML file; a top-level ``xattention:`` section is accepted too."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
        if "xattention" in data:
            data = data["xattention"]
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "XAttentionConfig":
        return dataclasses.replace(self, **changes)


def _normalise_threshold(t: Any) -> Threshold:
    if not isinstance(t, Mapping):
        return _check_tau(t, "threshold")
    unknown = set(t) - {"default", "layers", "heads"}
    if unknown:
        raise ValueError(f"threshold table has unknown key(s) {sorted(unknown)}; accepted: default, layers, heads")
    default = _check_tau(t.get("default", 0.9), "threshold.default")
    layers = {int(k): _check_tau(v, f"threshold.layers[{k}]") for k, v in (t.get("layers") or {}).items()}
    heads: dict[int, tuple[float, ...]] = {}
    for k, v in (t.get("heads") or {}).items():
        if not isinstance(v, Sequence) or isinstance(v, str):
            raise ValueError(f"threshold.heads[{k}]={v!r} must be a list with one threshold per head")
        heads[int(k)] = tuple(_check_tau(x, f"threshold.heads[{k}]") for x in v)
    return _FrozenTable(default=default, layers=layers, heads=heads)


class _FrozenTable(dict):
    """A threshold table that hashes and compares by value (the config is frozen)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash((self["default"], tuple(sorted(self["layers"].items())), tuple(sorted(self["heads"].items()))))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


PRESET_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    """Names of the bundled YAML presets (``xattn_video/configs/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> XAttentionConfig:
    """A config from a YAML file path or a bundled preset name (e.g. ``"hunyuan_720p_fast"``)."""
    p = Path(name_or_path)
    if p.is_file():
        return XAttentionConfig.load(p)
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return XAttentionConfig.load(preset)
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor a preset; presets: {preset_names()}")
