"""The report's schema, as types: every writer (CLI ``summary.json``, ``report.json`` of ``compare``, the ComfyUI
compare node) fills these, and every density in them comes from the runtime's ``RunRecord``.

- ``RunTiming``: one generation's times;
- ``DensityReport``: the run record as step x layer tables (same in the summary and the compare report);
- ``TimingComparison``: dense vs sparse times and speedups;
- ``CompareReport``: ``report.json`` (fields in ``REPORT_FIELDS`` order);
- ``GenerateSummary``: ``summary.json`` of ``xattn-video generate``.

``to_dict()`` gives the JSON form (plain types; the writer turns non-finite floats into strings),
``from_dict()`` reads it back and checks it.

Example::

    density = DensityReport.from_record(runtime.record, num_steps=50)
    density.per_step_layer[0]        # [1.0, 1.0, ...]: warmup steps are dense, recorded as 1.0
    density.mean_sparse_steps        # runtime.record.mean_density_after_warmup()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..runtime.record import UNKNOWN_STEP, RunRecord

REPORT_FIELDS: list[str] = [
    "prompt", "seed", "model", "device", "dtype",
    "num_frames", "height", "width", "num_inference_steps", "warmup_steps",
    "config", "timing", "density", "fidelity", "vbench", "identical",
]
SUMMARY_FIELDS: list[str] = [
    "prompt", "seed", "model", "num_frames", "height", "width", "num_inference_steps", "warmup_steps",
    "config", "wall_time_s", "timing", "density", "video",
]


def _require(data: Mapping[str, Any], names: list[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} is {type(data).__name__}; expected an object with {names}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{where} lacks {missing}")


@dataclass
class RunTiming:
    """Seconds, wall clock (GPU synchronised): end to end (text encoding, denoising, VAE decode), the
    denoising steps, the decode; per step, and (optional) per step inside the block attention modules."""

    total_s: float
    denoise_s: float
    decode_s: float
    step_s: list[float]
    attention_s: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "timing") -> "RunTiming":
        _require(data, ["total_s", "denoise_s", "decode_s", "step_s"], where)
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class DensityReport:
    """Fractions of attention blocks computed, from the run record.

    Attributes:
        layers: the attention layer names, in layer order.
        per_step_layer: ``[step][layer]``: mean over the calls of that step; 1.0 = dense (warmup, dense layer,
            ...); None only where the layer was not called at that step.
        reasons: ``[step][layer]``: why (``warmup``, ``dense_layer``, ``exact``, ``estimated``, ``reused``,
            ``source``, ...; see ``xattn_video.runtime.plan``), None where not called.
        mean_sparse_steps: ``RunRecord.mean_density_after_warmup()``.
        per_head: ``{step: {layer: [per-head density]}}`` (keys as strings; dense calls are all 1.0).
    """

    layers: list[str]
    per_step_layer: list[list[float | None]]
    reasons: list[list[str | None]]
    mean_sparse_steps: float | None
    per_head: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: RunRecord, num_steps: int) -> "DensityReport":
        """Steps 0..num_steps-1 of ``record`` (calls of an unknown step appear in ``per_head`` under "-1")."""
        layers = record.layers()
        reasons = record.decision_table()
        return cls(
            layers=[record.layer_names.get(i, str(i)) for i in layers],
            per_step_layer=record.per_step_layer(num_steps, layers),
            reasons=[[reasons.get(s, {}).get(l) for l in layers] for s in range(num_steps)],
            mean_sparse_steps=record.mean_density_after_warmup(),
            per_head={str(s): {str(l): v for l, v in ls.items()} for s, ls in record.head_table().items()
                      if s == UNKNOWN_STEP or s < num_steps},
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "density") -> "DensityReport":
        _require(data, ["layers", "per_step_layer", "mean_sparse_steps"], where)
        width = len(data["layers"])
        for s, row in enumerate(data["per_step_layer"]):
            if len(row) != width:
                raise ValueError(f"{where}.per_step_layer[{s}] has {len(row)} entries; expected {width} (one per layer)")
        return cls(layers=list(data["layers"]), per_step_layer=[list(r) for r in data["per_step_layer"]],
                   reasons=[list(r) for r in data.get("reasons") or []], mean_sparse_steps=data["mean_sparse_steps"],
                   per_head=dict(data.get("per_head") or {}))


@dataclass
class TimingComparison:
    """Dense and sparse runs' times; speedups are dense / sparse."""

    dense: RunTiming
    sparse: RunTiming
    speedup_end_to_end: float
    speedup_denoise: float | None
    speedup_per_step: list[float | None]
    warmup_step_indices: list[int]

    @classmethod
    def of(cls, dense: RunTiming, sparse: RunTiming, warmup_steps: int) -> "TimingComparison":
        return cls(
            dense=dense, sparse=sparse,
            speedup_end_to_end=dense.total_s / sparse.total_s,
            speedup_denoise=dense.denoise_s / sparse.denoise_s if sparse.denoise_s else None,
            speedup_per_step=[d / s if s else None for d, s in zip(dense.step_s, sparse.step_s)],
            warmup_step_indices=list(range(min(warmup_steps, len(sparse.step_s)))),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dense": self.dense.to_dict(), "sparse": self.sparse.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "timing") -> "TimingComparison":
        _require(data, [f.name for f in dataclasses.fields(cls)], where)
        return cls(**{**data, "dense": RunTiming.from_dict(data["dense"], f"{where}.dense"),
                      "sparse": RunTiming.from_dict(data["sparse"], f"{where}.sparse")})


@dataclass
class CompareReport:
    """``report.json`` of a dense-vs-XAttention comparison (see the README's Report section).

    ``fidelity`` is ``metrics.fidelity_report(dense, sparse)``, ``vbench`` ``{"dense": ..., "sparse": ...}`` of
    ``metrics.vbench_dimensions``: those are the metrics' own documented dicts.
    """

    prompt: str
    seed: int
    model: str
    device: str
    dtype: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    warmup_steps: int
    config: dict[str, Any]
    timing: TimingComparison
    density: DensityReport
    fidelity: dict[str, Any]
    vbench: dict[str, Any]
    identical: bool

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in REPORT_FIELDS}
        d["timing"], d["density"] = self.timing.to_dict(), self.density.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompareReport":
        """Check a report dict (e.g. ``load_report(dir)``) against the schema and type it."""
        _require(data, REPORT_FIELDS, "report")
        return cls(**{**{f: data[f] for f in REPORT_FIELDS},
                      "timing": TimingComparison.from_dict(data["timing"]),
                      "density": DensityReport.from_dict(data["density"])})


@dataclass
class GenerateSummary:
    """``summary.json`` of ``xattn-video generate``: what ran, its times and the densities it used."""

    prompt: str
    seed: int
    model: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    warmup_steps: int
    config: dict[str, Any]
    wall_time_s: float
    timing: RunTiming
    density: DensityReport
    video: str

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in SUMMARY_FIELDS}
        d["timing"], d["density"] = self.timing.to_dict(), self.density.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerateSummary":
        _require(data, SUMMARY_FIELDS, "summary")
        return cls(**{**{f: data[f] for f in SUMMARY_FIELDS}, "timing": RunTiming.from_dict(data["timing"]),
                      "density": DensityReport.from_dict(data["density"])})
