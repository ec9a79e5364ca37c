"""Daily Evidently reports as standalone HTML files, plus the flat numbers the DuckDB trend tables keep.

Each file is Evidently's own self-contained dashboard (its JavaScript is inlined, so it opens offline) with an
ExamPass section on top that says what the *checks* decided and why. That section matters: Evidently colours
a column red at p < 0.05 without any multiple-testing correction, so on a healthy day one of the seven
features is often red while ExamPass's drift rule (exampass_pipeline.monitoring.drift) correctly says "no drift". A
reader needs both side by side.

Days Evidently cannot describe (no rows, no labels, a single class) still get a file that says why, rather
than an exception that would fail the daily run and leave a gap in the report folder.

Evidently 0.7.23 notes, verified against the installed package:
* ``Snapshot.save_html`` silently writes nothing when given a ``pathlib.Path``; we render with
  ``get_html_str(as_iframe=False)`` and write the file ourselves, atomically.
* ``GroupBy(<classification metric>, column)`` returns the whole-dataset value for every group, and the
  classification presets raise ``KeyError`` when a batch holds one class; so per-segment figures come from
  ``quality.segment_quality`` (the same definitions the segment check judges by) and are rendered here.
* With both ``prediction_labels`` and ``prediction_probas`` set, Evidently derives labels from the
  probabilities at ``probas_threshold`` (``>=``), ignoring the label column; we feed it the fail probability
  and the threshold translated to the fail side, nudged so that a student exactly at the pass threshold
  counts as "pass", as the served rule does.

The pieces: ``page`` holds what both reports share (the ExamPass section's HTML, the page around Evidently's
dashboard, the atomic write, the flat numbers); ``drift_page`` and ``quality_page`` each build one report.
"""

from __future__ import annotations

from exampass_pipeline.monitoring.reports.drift_page import drift_report
from exampass_pipeline.monitoring.reports.page import PROBABILITY
from exampass_pipeline.monitoring.reports.quality_page import quality_report

__all__ = ["PROBABILITY", "drift_report", "quality_report"]
