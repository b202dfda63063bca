"""Reports: the typed schema (``schema.py``) and the writer of ``report.json`` / ``report.md`` / plots (``writer.py``).

Example::

    from xattn_video.report import CompareReport, DensityReport, write_report
    density = DensityReport.from_record(runtime.record, num_steps=50)
"""

from .schema import (
    REPORT_FIELDS,
    SUMMARY_FIELDS,
    CompareReport,
    DensityReport,
    GenerateSummary,
    RunTiming,
    TimingComparison,
)
from .writer import FILES, HEADLINE_FIELDS, json_safe, load_report, render_report, write_report

__all__ = [
    "CompareReport", "DensityReport", "GenerateSummary", "RunTiming", "TimingComparison", "REPORT_FIELDS",
    "SUMMARY_FIELDS", "FILES", "HEADLINE_FIELDS", "json_safe", "load_report", "render_report", "write_report",
]
