"""An Evidently drift report, opened the way a person opens it from the Dagster UI: its file:// link.

The report is made by the same function the drift_report asset calls, on the Kaggle students as reference and
a synthetic day in which the free/reduced lunch share doubles. With the network blocked, the page must render
its drift table by itself, flag the lunch column as drifted and leave gender (which the shift does not touch)
alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", ""}


def test_drift_report_opens_and_shows_its_drift_table(
    tmp_path: Path, page: Any, data_file: Path, snap: Callable[..., Path]
) -> None:
    from exampass_pipeline.contract import schema
    from exampass_pipeline.ml import dataset, synthetic
    from exampass_pipeline.monitoring import reports

    reference = dataset.read_students_csv(data_file)[list(schema.FEATURES)]
    current = synthetic.sample(400, seed=11, scenario="lunch_shift")[list(schema.FEATURES)]
    html = tmp_path / "reports" / "drift" / "2026-11-26.html"
    html.parent.mkdir(parents=True)
    reports.drift_report(reference, current, html)
    assert html.is_file() and html.stat().st_size > 0

    outside: list[str] = []

    def offline(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")) or (urlparse(url).hostname or "") in LOOPBACK:
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", offline)
    page.goto(html.as_uri())
    summary = page.get_by_text("Data Drift Summary", exact=True).first
    summary.wait_for()
    table = page.locator("table", has=page.get_by_text("Stat Test", exact=True)).first
    table.wait_for()
    table.scroll_into_view_if_needed()
    rows_per_page = page.get_by_text("Rows per page:", exact=True)
    if rows_per_page.count():
        # The table pages by default; show every feature so the person sees all verdicts at once.
        page.locator("[aria-haspopup='listbox']").last.click()
        page.get_by_role("option").last.click()
    snap(page, "evidently-drift-report")

    verdicts: dict[str, str] = {}
    for row in table.locator("tbody tr").all():
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        names = [c for c in cells if c in schema.FEATURES]
        states = [c for c in cells if c in {"Detected", "Not Detected"}]
        if names and states:
            verdicts[names[0]] = states[0]
    assert set(schema.FEATURES) <= set(verdicts), f"the drift table lists {sorted(verdicts)}"
    assert verdicts[schema.LUNCH] == "Detected"
    assert verdicts[schema.GENDER] == "Not Detected"
    assert not outside, f"the report tried to reach the network: {outside}"
