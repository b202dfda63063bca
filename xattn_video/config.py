"""XAttention settings: the op's parameters (``OpConfig``) apart from the schedule's (``ScheduleConfig``).

``OpConfig`` is everything ``xattention()`` needs for one call (blocks, stride, thresholds, text and diagonal
blocks, density cap, backend). ``ScheduleConfig`` is what the runtime decides per call across a generation
(dense warmup steps, dense layers, mask reuse, minimum length, unknown-step and fallback policies, the
break-even density above which a call runs dense).
``XAttentionConfig`` holds one of each; it accepts and exposes the flat field names too, so
``XAttentionConfig(threshold=0.9, warmup_steps=5).threshold`` works.

YAML: ``op:`` and ``schedule:`` sections (what ``save`` writes). Files with the flat keys of earlier versions
(``threshold: 0.9`` next to ``warmup_steps: 5``) load unchanged: every name belongs to exactly one section.

Example::

    from xattn_video import XAttentionConfig
    cfg = XAttentionConfig(threshold=0.95, warmup_steps=5)
    cfg.op.threshold, cfg.schedule.warmup_steps          # 0.95, 5
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

BACKENDS = ("auto", "triton", "sdpa", "reference")
PRECISIONS = ("native", "fp8", "int8-fp8")  # the sparse attention's products
ESTIMATE_PRECISIONS = ("native", "fp8")  # the estimate's strided GEMM
UNKNOWN_STEP_POLICIES = ("dense", "sparse", "error")
FALLBACK_POLICIES = ("dense", "error")
RESIDUAL_PRECISIONS = ("native", "fp8")
TOKEN_ORDERS = ("raster", "tile")


def _check_tau(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise ValueError(f"{where}={value!r} is out of range: a threshold must be a number in (0, 1]")
    return float(value)


def _check_int(obj: Any, names: Sequence[str]) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}={v!r} must be an integer")


@dataclass(frozen=True)
class OpConfig:
    """The parameters of one ``xattention()`` call.

    Attributes:
        block_size: B, side of the square attention blocks (tokens). 4..512, a multiple of ``stride``.
        stride: S, antidiagonal stride of the estimate; divides ``block_size``. The paper uses 8 or 16.
        threshold: tau in (0, 1]; per query-block row keep the fewest key blocks whose estimated mass reaches
            tau. A float, or a table ``{"default": t, "layers": {i: t}, "heads": {i: [t_h, ...]}}``.
        keep_text: text (global) tokens: their keys are always kept and their queries attend densely.
        keep_diagonal: always keep the diagonal block of each query-block row.
        max_density: optional cap in (0, 1] on the fraction of key blocks kept per query-block row.
        sink_aware: average the antidiagonal-mean estimate with a max-logit one, so that keys few queries
            attend to strongly (sinks) are not underrated (see ``strided_block_scores_reference``). Off by
            default until the GPU benchmark judges it.
        backend: "triton" (CUDA kernels), "sdpa" (the attention through PyTorch's SDPA with a token mask, any
            device, native precision; estimate and selection in plain PyTorch), "reference" (plain PyTorch
            throughout: the tests' oracle) or "auto" (triton where it can run, else sdpa; reference for 8 bits).
        allow_fallback: with backend="triton", run the reference (logged once) instead of failing when the
            Triton path cannot run.
        token_order: the order of the video tokens that blocks are cut from: "raster" (the model's own: frame,
            row, column) or "tile" (each block a compact t x h x w piece of space-time; the runtime permutes
            the video tokens before the estimate and the attention and back after, text stays last; needs
            the video grid from the host, see ``xattn_video.token_order``).
        tile: with token_order="tile", the tile shape ``(t, h, w)`` in tokens; None: ``default_tile(block_size)``
            (2 x 8 x 8 for B = 128).
        precision: the sparse attention's products: "native" (the inputs' dtype), "int8-fp8" (Q.K^T in int8,
            P.V in e4m3, SageAttention's recipe: about 1.4x faster on an H200, cosine >= 0.999 to native on
            structured inputs) or "fp8" (both in e4m3: as fast, less accurate). Triton backend only; the
            reference computes the same rounding in float32.
        estimate_precision: the estimate's strided GEMM in "native" or "fp8" (e4m3; the scores only rank
            blocks: about 1.6x faster at 720p, masks 97% alike).

    Example::

        op = OpConfig(block_size=64, stride=8, threshold=0.9)
        op = OpConfig(threshold=0.9, token_order="tile")       # blocks of 2 x 8 x 8 tokens
    """

    block_size: int = 128
    stride: int = 16
    threshold: Threshold = 0.9
    keep_text: bool = True
    keep_diagonal: bool = True
    max_density: float | None = None
    sink_aware: bool = False
    backend: str = "auto"
    allow_fallback: bool = False
    token_order: str = "raster"
    tile: tuple[int, int, int] | None = None
    precision: str = "native"
    estimate_precision: str = "native"

    def __post_init__(self) -> None:
        _check_int(self, ("block_size", "stride"))
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"token_order={self.token_order!r} is not one of {TOKEN_ORDERS}")
        if self.tile is not None:
            tile = self.tile
            if isinstance(tile, (str, bytes)) or not isinstance(tile, Sequence) or len(tile) != 3 or any(
                    isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in tile):
                raise ValueError(f"tile={tile!r} must be three positive integers (t, h, w) in tokens, or None")
            object.__setattr__(self, "tile", tuple(int(x) for x in tile))
        if not 4 <= self.block_size <= 512:
            raise ValueError(f"block_size={self.block_size} is out of range: accepted 4..512")
        if self.stride < 1 or self.block_size % self.stride:
            raise ValueError(
                f"stride={self.stride} must be >= 1 and divide block_size={self.block_size} (e.g. 8 or 16 for 128)"
            )
        if not isinstance(self.sink_aware, bool):
            raise ValueError(f"sink_aware={self.sink_aware!r} must be true or false")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {BACKENDS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {PRECISIONS}")
        if self.estimate_precision not in ESTIMATE_PRECISIONS:
            raise ValueError(f"estimate_precision={self.estimate_precision!r} is not one of {ESTIMATE_PRECISIONS}")
        if self.backend == "sdpa" and self.precision != "native":
            raise ValueError(f"backend='sdpa' runs native precision only, got precision={self.precision!r}; "
                             "accepted: backend 'triton', 'reference' or 'auto' for 8 bits")
        if self.max_density is not None:
            if isinstance(self.max_density, bool) or not isinstance(self.max_density, (int, float)) \
                    or not 0.0 < float(self.max_density) <= 1.0:
                raise ValueError(f"max_density={self.max_density!r} is out of range: accepted (0, 1] or None")
            object.__setattr__(self, "max_density", float(self.max_density))
        object.__setattr__(self, "threshold", _normalise_threshold(self.threshold))

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

    def is_exact(self, layer: int | None = None, num_heads: int = 1) -> bool:
        """True when the op would keep every block: no density cap and tau = 1 (for ``layer``, or for every
        layer and head when ``layer`` is None)."""
        if self.max_density is not None:
            return False
        if layer is not None:
            tau = self.threshold_for(layer, num_heads)
            return all(v >= 1.0 for v in (tau if isinstance(tau, list) else [tau]))
        t = self.threshold
        values = [t] if not isinstance(t, Mapping) else (
            [t["default"], *t["layers"].values(), *(x for h in t["heads"].values() for x in h)]
        )
        return all(v >= 1.0 for v in values)

    def tile_shape(self) -> tuple[int, int, int]:
        """The tile of ``token_order="tile"``: ``tile``, or ``default_tile(block_size)``."""
        from .token_order import default_tile

        return self.tile if self.tile is not None else default_tile(self.block_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tile"] = list(self.tile) if self.tile is not None else None
        if isinstance(self.threshold, Mapping):
            d["threshold"] = {
                "default": self.threshold["default"],
                "layers": dict(self.threshold["layers"]),
                "heads": {k: list(v) for k, v in self.threshold["heads"].items()},
            }
        return d


@dataclass(frozen=True)
class ScheduleConfig:
    """What the runtime decides per call across a generation (see ``xattn_video.runtime``).

    Attributes:
        warmup_steps: the first denoising steps that run dense attention.
        dense_layers: transformer block indices (0-based over double then single blocks) kept dense.
        mask_reuse_steps: reuse a layer's block mask for this many consecutive sparse steps (1 = estimate
            every step).
        min_seq_len: sequences shorter than this (and any below two blocks) run dense.
        unknown_step: when the host cannot say which denoising step a call belongs to and ``warmup_steps``
            > 0: ``"dense"`` (default: the warmup cannot be honoured, so stay exact), ``"sparse"`` (ignore the
            warmup) or ``"error"``. Logged once either way.
        fallback: a call XAttention cannot take (an attention mask that is not a key-padding mask):
            ``"dense"`` runs the host's own attention (logged once), ``"error"`` raises.
        dense_above: break-even density in (0, 1), or None (off, the default): a call whose selected mask
            keeps more than this fraction of its blocks runs dense instead (the host's attention), recorded
            with reason ``"above_break_even"`` and the mask's density. Above the break-even the block-sparse
            kernel is slower than dense attention (720p, H200: 89.5% of blocks took 23.9 s a step against
            22.8 s dense), so the break-even lies below 0.895; its value comes from the kernel bench.
        residual: add back what the masks leave out, as measured at a dense step (``runtime.residual``): the
            last warmup step also runs each call sparse on a fresh mask and keeps the mask and the difference
            dense - sparse; the sparse steps attend with that mask and add the difference. Costs one attention
            output of memory per layer and call. Needs ``warmup_steps`` >= 1 and ``mask_reuse_steps`` = 1 (the
            masks are held until the next refresh anyway).
        residual_refresh: with ``residual``, after every this-many sparse steps one step runs dense again
            (reason ``"refresh"``, counted as density 1) and renews the masks and differences; 0 (default):
            only the last warmup step measures them.
        residual_precision: how the differences are held: ``"native"`` (q's dtype, the default) or ``"fp8"``
            (e4m3 with one float32 scale per token and head: half the memory, e.g. 21 instead of 41 GiB for
            HunyuanVideo at 720p; dequantized when added back).

    Example::

        schedule = ScheduleConfig(warmup_steps=5, mask_reuse_steps=2, dense_above=0.8)
        schedule = ScheduleConfig(warmup_steps=3, residual=True, residual_refresh=8, residual_precision="fp8")
    """

    warmup_steps: int = 5
    dense_layers: tuple[int, ...] = ()
    mask_reuse_steps: int = 1
    min_seq_len: int = 0
    unknown_step: str = "dense"
    fallback: str = "dense"
    dense_above: float | None = None
    residual: bool = False
    residual_refresh: int = 0
    residual_precision: str = "native"

    def __post_init__(self) -> None:
        _check_int(self, ("warmup_steps", "mask_reuse_steps", "min_seq_len", "residual_refresh"))
        if self.dense_above is not None:
            if isinstance(self.dense_above, bool) or not isinstance(self.dense_above, (int, float)) \
                    or not 0.0 < float(self.dense_above) < 1.0:
                raise ValueError(f"dense_above={self.dense_above!r} is out of range: accepted (0, 1) or None (off)")
            object.__setattr__(self, "dense_above", float(self.dense_above))
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.mask_reuse_steps < 1:
            raise ValueError(f"mask_reuse_steps={self.mask_reuse_steps} must be >= 1")
        if self.min_seq_len < 0:
            raise ValueError(f"min_seq_len={self.min_seq_len} must be >= 0")
        if not isinstance(self.residual, bool):
            raise ValueError(f"residual={self.residual!r} must be true or false")
        if self.residual_refresh < 0:
            raise ValueError(f"residual_refresh={self.residual_refresh} must be >= 0 (0: measure at the warmup only)")
        if self.residual_precision not in RESIDUAL_PRECISIONS:
            raise ValueError(f"residual_precision={self.residual_precision!r} is not one of {RESIDUAL_PRECISIONS}")
        if self.residual and self.warmup_steps < 1:
            raise ValueError("residual=True needs warmup_steps >= 1 (the differences are measured at the last "
                             "warmup step), got warmup_steps=0")
        if self.residual and self.mask_reuse_steps != 1:
            raise ValueError(f"residual=True holds each mask until the next refresh; mask_reuse_steps must be 1, "
                             f"got {self.mask_reuse_steps}")
        if self.unknown_step not in UNKNOWN_STEP_POLICIES:
            raise ValueError(f"unknown_step={self.unknown_step!r} is not one of {UNKNOWN_STEP_POLICIES}")
        if self.fallback not in FALLBACK_POLICIES:
            raise ValueError(f"fallback={self.fallback!r} is not one of {FALLBACK_POLICIES}")
        if isinstance(self.dense_layers, (str, bytes)) or not isinstance(self.dense_layers, Sequence):
            raise ValueError(f"dense_layers={self.dense_layers!r} must be a list of non-negative block indices")
        layers = tuple(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"dense_layers={self.dense_layers!r} must be non-negative block indices")
        object.__setattr__(self, "dense_layers", layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dense_layers"] = list(self.dense_layers)
        return d


OP_FIELDS = tuple(f.name for f in dataclasses.fields(OpConfig))
SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleConfig))


@dataclass(frozen=True, init=False)
class XAttentionConfig:
    """An ``OpConfig`` and a ``ScheduleConfig``; built from either or from flat field names.

    ``XAttentionConfig(threshold=0.9, warmup_steps=5)`` equals
    ``XAttentionConfig(op=OpConfig(threshold=0.9), schedule=ScheduleConfig(warmup_steps=5))``. Every field
    of both parts reads as an attribute (``cfg.threshold``, ``cfg.warmup_steps``); ``replace`` takes them too.

    Example::

        cfg = XAttentionConfig(threshold=0.9, warmup_steps=5, mask_reuse_steps=2)
        xattention(q, k, v, cfg.op)                           # the op sees only its part
    """

    op: OpConfig
    schedule: ScheduleConfig

    def __init__(self, op: OpConfig | None = None, schedule: ScheduleConfig | None = None, **fields: Any) -> None:
        unknown = sorted(set(fields) - set(OP_FIELDS) - set(SCHEDULE_FIELDS))
        if unknown:
            raise ValueError(f"unknown XAttention config field(s) {unknown}; accepted: op fields "
                             f"{list(OP_FIELDS)}, schedule fields {list(SCHEDULE_FIELDS)}")
        if op is not None and not isinstance(op, OpConfig):
            raise TypeError(f"op must be an OpConfig, got {type(op).__name__}")
        if schedule is not None and not isinstance(schedule, ScheduleConfig):
            raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
        op_changes = {k: v for k, v in fields.items() if k in OP_FIELDS}
        schedule_changes = {k: v for k, v in fields.items() if k in SCHEDULE_FIELDS}
        # a part without changes is kept as is (the same object)
        op = OpConfig(**op_changes) if op is None else dataclasses.replace(op, **op_changes) if op_changes else op
        schedule = (ScheduleConfig(**schedule_changes) if schedule is None
                    else dataclasses.replace(schedule, **schedule_changes) if schedule_changes else schedule)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "schedule", schedule)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: the flat field names of both parts
        if name in OP_FIELDS:
            return getattr(self.op, name)
        if name in SCHEDULE_FIELDS:
            return getattr(self.schedule, name)
        raise AttributeError(f"'XAttentionConfig' object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"XAttentionConfig(op={self.op!r}, schedule={self.schedule!r})"

    def threshold_for(self, layer: int | None, num_heads: int) -> float | list[float]:
        """The threshold(s) of one layer (see ``OpConfig.threshold_for``)."""
        return self.op.threshold_for(layer, num_heads)

    def is_dense_everywhere(self) -> bool:
        """True when the op keeps every block in every layer (tau = 1 everywhere and no density cap)."""
        return self.op.is_exact()

    def replace(self, **changes: Any) -> "XAttentionConfig":
        """A copy with some fields changed: flat names, or ``op=`` / ``schedule=``."""
        return XAttentionConfig(op=changes.pop("op", self.op), schedule=changes.pop("schedule", self.schedule),
                                **changes)

    # -- YAML ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"op": {...}, "schedule": {...}}`` (the form ``save`` writes and reports store)."""
        return {"op": self.op.to_dict(), "schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "XAttentionConfig":
        """From ``{"op": {...}, "schedule": {...}}``, or the flat keys of earlier versions, or a mix."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an XAttention config must be a mapping, got {type(data).__name__}")
        flat: dict[str, Any] = {}
        for section, names in (("op", OP_FIELDS), ("schedule", SCHEDULE_FIELDS)):
            part = data.get(section) or {}
            if not isinstance(part, Mapping):
                raise ValueError(f"config section {section!r} must be a mapping, got {type(part).__name__}")
            wrong = sorted(set(part) - set(names))
            if wrong:
                raise ValueError(f"unknown key(s) {wrong} in config section {section!r}; accepted: {list(names)}")
            flat.update(part)
        rest = {k: v for k, v in data.items() if k not in ("op", "schedule")}
        unknown = sorted(set(rest) - set(OP_FIELDS) - set(SCHEDULE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown XAttention config key(s) {unknown}; accepted: op: {list(OP_FIELDS)}, schedule: "
                f"{list(SCHEDULE_FIELDS)} (as `op:` / `schedule:` sections, or flat as in earlier versions)"
            )
        twice = sorted(set(rest) & set(flat))
        if twice:
            raise ValueError(f"config key(s) {twice} given both flat and inside a section; keep one")
        flat.update(rest)
        return cls(**flat)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False))

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
            data = data["xattention"] or {}
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"config file {str(p)!r}: {e}") from None


class _Dumper(yaml.SafeDumper):
    """Block style, with lists (per-head thresholds, dense layers) on one line each."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


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
