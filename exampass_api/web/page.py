"""The web page at ``/``: what the routes in ``routes.page`` render, and how the page reads its forms.

For teachers and school analysts, who work in spreadsheets and want reasons in words. Choices:

* Plain HTML forms rendered on the server (Jinja2, templates and CSS packaged in ``exampass_api``): it works
  with JavaScript off and with no internet, so no CDN, no framework, and no script at all. The explanation's
  bar chart is inline SVG laid out by ``reasons.chart``.
* One judge of validity: the form is ``novalidate`` and every value goes through ``schema.validate_record``
  (the roster through ``roster.parse_roster``), so the page shows the API's own reasons beside the field.
* One scoring path: ``PredictionService.score``, as /predict/batch and /predict/csv, so the page shows the
  same probability, decision and per-student threshold, and logs each scored row with its client.
* When predict is not public, the page asks for a key and keeps it in a session cookie (HttpOnly,
  SameSite=Strict, no expiry: gone when the browser closes); ``auth`` verifies it as a Bearer token.
* The roster's "Download CSV" is a ``data:`` link to the very bytes /predict/csv would answer: nothing is
  kept on the server, nothing is scored (or logged) twice, and it works without JavaScript.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message

from exampass_api.core.responses import read_limited
from exampass_api.core.routing import FormRoute, Handler
from exampass_api.core.security import PREDICT, SESSION_COOKIE, Access, Refused, checked_token
from exampass_api.services import reasons
from exampass_api.services.advice import sentences
from exampass_api.services.model_store import Bundle, ModelStore
from exampass_api.services.prediction import PayloadTooLarge, PredictionService, Scored
from exampass_api.services.roster import (
    MAX_ROSTER,
    MAX_ROSTER_BYTES,
    CellError,
    Roster,
    RosterRejected,
    advice_texts,
    cell_value,
    parse_roster,
    problems,
    score_valid_rows,
    to_csv,
)
from exampass_pipeline.contract import schema

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
TEMPLATES: Final = Jinja2Templates(directory=str(HERE / "templates"))
FORM_LIMIT: Final = 16 * 1024
UPLOAD_LIMIT: Final = MAX_ROSTER_BYTES + 64 * 1024  # the file plus the multipart envelope
ROSTER_ID_COLUMNS: Final = 3
# The page needs nothing from anywhere else; results hold student data, so no cache keeps them either.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer Chromium posts forms with "Origin: null".
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
METRIC_LABELS: Final = {
    "test_roc_auc": "ROC AUC",
    "test_recall_fail": "recall (fail)",
    "test_precision_fail": "precision (fail)",
    "test_f1_fail": "F1 (fail)",
    "test_balanced_accuracy": "balanced accuracy",
    "test_accuracy": "accuracy",
    "test_brier": "Brier score",
}


@dataclass(frozen=True)
class Field:
    """One control of the student form, labelled with the name people know from the Kaggle file."""

    name: str
    label: str
    options: tuple[str, ...] = ()


FIELDS: Final = tuple(
    Field(name, reasons.LABELS[name], schema.CATEGORIES.get(name, ())) for name in schema.FEATURES
)


@dataclass(frozen=True)
class Notice:
    """A message for the person, shown in the part of the page it concerns (student, roster or key)."""

    where: str
    title: str
    text: str
    status: int = 200


@dataclass(frozen=True)
class Answer:
    percent: str
    passes: bool
    threshold: str
    sentence: str
    chart: reasons.Chart
    prediction_id: str
    advice: list[str] = field(default_factory=list)  # what would change the verdict, in words (flagged only)


@dataclass(frozen=True)
class RankedRow:
    rank: int
    row: int
    ids: list[str]
    percent: str
    passes: bool
    reasons: list[str]


@dataclass(frozen=True)
class RosterView:
    filename: str
    scored: int
    id_columns: list[str]
    ranked: list[RankedRow]
    errors: list[CellError]
    download: str
    download_name: str


@dataclass(frozen=True)
class Footer:
    version: str
    trained: str
    candidate: str
    metrics: list[tuple[str, str]]
    card: str | None


@dataclass
class View:
    """Everything the template shows; each route fills in its part."""

    key_needed: bool
    keyed: bool
    footer: Footer | None
    unavailable: str | None
    values: dict[str, str] = field(default_factory=dict)
    field_errors: dict[str, str] = field(default_factory=dict)
    notice: Notice | None = None
    answer: Answer | None = None
    roster: RosterView | None = None


# ------------------------------------------------------------------------------------------------ views
def footer(bundle: Bundle | None) -> Footer | None:
    """What is being served: version, training date, test metrics, and the model card once there is one."""
    if bundle is None:
        return None
    info = bundle.info
    trained = str(info.get("trained_at") or "unknown")
    trained = trained[:16].replace("T", " ") + " UTC" if info.get("trained_at") else trained
    metrics = info.get("test_metrics", {})
    shown = [(label, f"{metrics[name]:.2f}") for name, label in METRIC_LABELS.items() if name in metrics]
    card = "/model/card" if info.get("model_card") else None
    return Footer(bundle.version, trained, str(info.get("candidate", "")), shown, card)


def base_view(request: Request) -> View:
    """The page as anyone sees it before submitting anything."""
    store: ModelStore = request.app.state.store
    access: Access = request.app.state.access
    keyed = bool(request.cookies.get(SESSION_COOKIE))
    bundle = store.bundle
    return View(
        key_needed=not access.public_predict and not keyed,
        keyed=keyed,
        footer=footer(bundle),
        unavailable=None if bundle is not None else store.unavailable_reason,
    )


def render(
    request: Request, view: View, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    response = TEMPLATES.TemplateResponse(
        request,
        "page.html",
        {"view": view, "fields": FIELDS, "max_roster": f"{MAX_ROSTER:,}", "pass_mark": schema.PASS_MARK},
        status_code=status,
        headers={**HEADERS, **(headers or {})},
    )
    return response


def answer(record: Mapping[str, Any], scored: Scored, advice: Mapping[str, Any] | None) -> Answer:
    contributions = scored.contributions[0].tolist()
    return Answer(
        percent=reasons.percent(scored.probabilities[0]),
        passes=scored.decisions[0],
        threshold=reasons.threshold_percent(scored.thresholds[0]),
        sentence=reasons.sentence(record, contributions),
        chart=reasons.chart(record, contributions),
        prediction_id=scored.prediction_ids[0],
        advice=sentences(advice, record),
    )


def roster_view(roster: Roster, scored: Scored, csv_bytes: bytes, filename: str) -> RosterView:
    """The scored rows ranked by risk (lowest chance of passing first), the bad rows, and the download."""
    features = set(roster.columns.values())
    ids = [
        i
        for i in roster.kept_columns()
        if i not in features and schema.header_map([roster.header[i]])[0].get(roster.header[i]) is None
    ][:ROSTER_ID_COLUMNS]
    order = sorted(range(len(roster.valid)), key=lambda j: (scored.probabilities[j], j))
    contributions, top = scored.contributions.tolist(), scored.order.tolist()
    ranked = []
    for rank, j in enumerate(order, start=1):
        cells = roster.rows[roster.valid[j]]
        ranked.append(
            RankedRow(
                rank=rank,
                row=roster.numbers[roster.valid[j]],
                ids=[cells[i] for i in ids],
                percent=reasons.percent(scored.probabilities[j]),
                passes=scored.decisions[j],
                reasons=reasons.top_reasons(roster.records[j], contributions[j], top[j]),
            )
        )
    errors = [error for index in sorted(roster.errors) for error in roster.errors[index]]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename).stem).strip("-.") or "roster"
    return RosterView(
        filename=filename,
        scored=len(ranked),
        id_columns=[roster.header[i] for i in ids],
        ranked=ranked,
        errors=errors,
        download="data:text/csv;charset=utf-8;base64," + base64.b64encode(csv_bytes).decode("ascii"),
        download_name=f"{stem}-exampass.csv",
    )


def student_record(values: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's text as a record the scorer takes, or the reasons per field (the API's sentences).

    Read exactly as a roster cell is read (``roster.cell_value``, ``roster.problems``), so a value means the
    same thing typed into the form as in a spreadsheet.
    """
    record: dict[str, Any] = {}
    for name in schema.FEATURES:
        text = values.get(name, "")
        record[name] = cell_value(text) if name in schema.NUMERIC_FEATURES else (text.strip() or None)
    errors = {p.field: p.reason for p in problems(record)}
    if not errors:
        for name in schema.NUMERIC_FEATURES:
            record[name] = int(record[name])
    return record, errors


# ------------------------------------------------------------------------------------------------ input
async def read_form(request: Request, limit: int) -> FormData:
    """The posted form, refusing a body over ``limit`` bytes before parsing it (PayloadTooLarge).

    Starlette's form parser has no total size limit; the body is read with ``read_limited`` first and the
    parser is then given those bytes. A malformed body is a starlette HTTPException (400).
    """
    raw = await read_limited(request, limit, "this form")
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return await Request(request.scope, replay).form(max_files=1, max_fields=16)


async def read_upload(request: Request) -> tuple[bytes, str] | Notice:
    """The roster file's bytes and name, or the Notice saying why there is none."""
    try:
        form = await read_form(request, UPLOAD_LIMIT)
    except PayloadTooLarge:
        limit = f"{MAX_ROSTER_BYTES // 1_000_000} MB"
        return Notice("roster", "The file is too large", f"A roster may be up to {limit}; split it.", 413)
    except HTTPException as exc:
        return Notice("roster", "The upload could not be read", _why(exc), 400)
    upload = form.get("roster")
    if not isinstance(upload, UploadFile) or not upload.filename:
        await form.close()
        return Notice("roster", "No file was chosen", "Choose a CSV file, then press Score roster.", 422)
    try:
        return await upload.read(), upload.filename
    finally:
        await form.close()


def _why(exc: Exception) -> str:
    return str(exc.detail) if isinstance(exc, HTTPException) else str(exc)


# ------------------------------------------------------------------------------------------------ answers
async def predict_student(request: Request, client: str, service: PredictionService) -> Response:
    """The one-student form: its reasons beside the fields, or the answer with its chart and sentence."""
    view = base_view(request)
    try:
        form = await read_form(request, FORM_LIMIT)
    except (PayloadTooLarge, HTTPException) as exc:
        view.notice = Notice("student", "The form could not be read", _why(exc), 400)
        return render(request, view, 400)
    view.values = {f.name: value if isinstance(value := form.get(f.name), str) else "" for f in FIELDS}
    record, errors = student_record(view.values)
    if errors:
        view.field_errors = errors
        return render(request, view, 422)
    store = service.store
    bundle = store.bundle  # read once: the answer and its footer come from the same model
    if bundle is None:
        view.notice = Notice("student", "No model is being served yet", store.unavailable_reason, 503)
        return render(request, view, 503)
    scored = await service.cpu.run(service.score, bundle, [record], client)
    advice = await service.cpu.run(service.advice_for, bundle, record, scored.decisions[0])
    view.footer, view.answer = footer(bundle), answer(record, scored, advice)
    return render(request, view)


async def score_roster(request: Request, client: str, service: PredictionService) -> Response:
    """The roster upload: the ranked table, the bad rows, and the download; or why the file was refused."""
    view = base_view(request)
    upload = await read_upload(request)
    if isinstance(upload, Notice):
        view.notice = upload
        return render(request, view, upload.status)
    raw, filename = upload
    try:
        roster = await service.cpu.run(parse_roster, raw)
    except RosterRejected as exc:
        view.notice = Notice("roster", f"{filename} was not scored", f"{exc.part}: {exc.reason}", exc.status)
        return render(request, view, exc.status)
    store = service.store
    bundle = store.bundle
    if bundle is None:
        view.notice = Notice("roster", "No model is being served yet", store.unavailable_reason, 503)
        return render(request, view, 503)
    view.footer = footer(bundle)
    view.roster = await service.cpu.run(_scored_roster, service, bundle, roster, client, filename)
    return render(request, view)


def _scored_roster(
    service: PredictionService, bundle: Bundle, roster: Roster, client: str, filename: str
) -> RosterView:
    scored = score_valid_rows(service, bundle, roster, client)
    answer_file = to_csv(roster, scored, advice_texts(service, roster, scored, bundle))
    return roster_view(roster, scored, answer_file, filename)


# ------------------------------------------------------------------------------------------------ refusals
def refused_view(request: Request, exc: Refused) -> View:
    """A 401/403/429 from the guard, said to a person, in the part of the page they used."""
    view = base_view(request)
    where = "roster" if request.url.path.endswith("/roster") else "student"
    if exc.status == 401 and not view.keyed and not request.headers.get("authorization"):
        view.key_needed = True
        view.notice = Notice(
            "key", "An API key is needed", "Predictions on this server need a key: enter it."
        )
    elif exc.status == 401:
        view.key_needed, view.keyed = True, False
        view.notice = Notice("key", "Your key was not accepted", f"{exc.detail}. Enter a valid key.")
    elif exc.status == 403:
        view.notice = Notice(where, "Your key may not make predictions", exc.detail)
    else:
        view.notice = Notice(where, "Too many requests", exc.detail)
    return view


def refusal_page(request: Request, exc: Refused) -> Response:
    view = refused_view(request, exc)
    headers = {k: v for k, v in exc.headers.items() if k == "Retry-After"}
    response = render(request, view, exc.status, headers)
    if exc.status == 401 and request.cookies.get(SESSION_COOKIE):
        forget(response, request)
    return response


def remember(response: Response, request: Request, token: str) -> None:
    """The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Path=/,
    no Max-Age or Expires (the browser drops it when it closes), Secure over https."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )


def forget(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


async def set_key(request: Request) -> Response:
    """The "enter your key" form: verified like a Bearer token; kept for the session only if it is good."""
    access: Access = request.app.state.access
    try:
        form = await read_form(request, FORM_LIMIT)
        token = str(form.get("key") or "").strip()
        access.identify_token(request, PREDICT, checked_token(token, "key"))
    except (PayloadTooLarge, HTTPException) as exc:
        view = replace(base_view(request), key_needed=True, keyed=False)
        view.notice = Notice("key", "The form could not be read", _why(exc), 400)
        return render(request, view, 400)
    except Refused as exc:
        view = replace(base_view(request), key_needed=True, keyed=False)
        view.notice = Notice("key", "That key was not accepted", exc.detail)
        return render(request, view, exc.status, {k: v for k, v in exc.headers.items() if k == "Retry-After"})
    response = RedirectResponse("/", status_code=303)
    remember(response, request, token)
    return response


def forget_key(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    forget(response, request)
    return response


def same_origin(request: Request) -> bool:
    """Whether a form post comes from this page, not from another site.

    Browsers say so themselves in ``Sec-Fetch-Site``, which a proxy rewriting ``Host`` does not disturb; an
    older browser is judged by ``Origin`` against ``Host``; a client that sends neither (curl) is no browser
    carrying someone's cookie.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


class PageRoute(FormRoute):
    """A route of the page: refusals are rendered as the page with a message, and posts from other sites
    are refused (the session cookie is SameSite=Strict already; this also covers browsers that ignore it)."""

    def refuse(self, request: Request, exc: Refused) -> Response:
        return refusal_page(request, exc)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method == "POST" and not same_origin(request):
                view = base_view(request)
                view.notice = Notice("student", "Refused", "This form was sent from another site.")
                return render(request, view, 403)
            return await handler(request)

        return route
