"""The pages an RA works in: queue, item (with its claim and decision forms), search, stats
and sessions.

Handlers are plain functions run in a worker thread (the store is synchronous psycopg2); the
`signed_in` decorator (auth.py) checks the session, and for POSTs the form's CSRF token, first.
GET never changes anything: an item is claimed only by a POST (its page asks, or the queue's
Review button, or the decision and n/p forms that move on to the next item), so a link, an
<img> or a top-level navigation from another site cannot claim items on an RA's behalf.
Everything shown comes from uploaded archives and is rendered through autoescaped templates;
nothing here builds HTML. Every request value goes through review/inputs.py first.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from review import inputs
from review.audio import UnsatisfiableRange, parse_range
from review.auth import signed_in
from review.settings import DECISIONS
from review.store import QueueFilter

DECISION_LABELS = {"violates": "Violates", "does_not_violate": "Does not violate", "unsure": "Unsure / escalate"}
MAX_REASON = 4000
MAX_SEARCH = 200
NEIGHBOURS_TRIED = 20


def queue_filter(request: Request) -> QueueFilter:
    """The queue's filters from the query string, checked (400 for a malformed one). In blind
    review the score filters are checked and then dropped: filtering by score would tell
    flagged items from audit items."""
    q = request.query_params
    blind = request.app.state.console.settings.blind
    score_min = inputs.optional_number(q.get("score_min"), "score_min", low=0, high=1)
    score_max = inputs.optional_number(q.get("score_max"), "score_max", low=0, high=1)
    return QueueFilter(
        policy=inputs.optional_text(q.get("policy"), "policy"),
        model=inputs.optional_text(q.get("model"), "model"),
        score_min=None if blind else score_min,
        score_max=None if blind else score_max,
        date_from=inputs.optional_day(q.get("date_from"), "date_from"),
        date_to=inputs.optional_day(q.get("date_to"), "date_to"),
    )


def filter_query(filters: QueueFilter) -> str:
    """The filters as a query string, re-encoded from parsed values (never echoed raw)."""
    return urlencode({k: v for k, v in filters.params().items() if v is not None})


def _item_id(request: Request) -> int:
    return inputs.record_id(request.path_params["item_id"], "item id")


@signed_in()
def home(request: Request) -> Response:
    return RedirectResponse("/queue", status_code=303)


@signed_in()
def queue_page(request: Request) -> Response:
    console, ra = request.app.state.console, request.state.ra
    filters = queue_filter(request)
    choices = console.store.filter_choices()
    return console.render(
        request,
        "queue.html",
        {
            "items": console.store.queue(ra.ra_user_id, filters, console.settings.queue_page_size),
            "counts": console.store.queue_counts(),
            "filters": filters,
            "filter_query": filter_query(filters),
            "policies": sorted({c["policy"] for c in choices}),
            "models": sorted({c["classifier_model"] for c in choices}),
            "blind": console.settings.blind,
            "other_sessions": len(console.store.sessions_of(ra.ra_user_id)) - 1,
        },
    )


@signed_in()
def item_page(request: Request) -> Response:
    """The item: to decide when this RA holds a claim on it (or decided it before); read-only
    with a Claim button when the queue offers it to them; 409 when another RA has it."""
    console, ra = request.app.state.console, request.state.ra
    item_id = _item_id(request)
    filters = queue_filter(request)
    item = console.store.item(item_id)
    if item is None:
        return _message(request, "No such item", "This item is not (or no longer) in the review queue.", 404)
    mine = console.store.my_decision(ra.ra_user_id, item_id)
    if mine is not None or console.store.holds_claim(ra.ra_user_id, item_id):
        mode = "decide"
    elif console.store.claimable(ra.ra_user_id, item_id):
        mode = "claim"
    else:
        return _taken(request)
    return _render_item(request, item, mine, mode, filters, error=None)


def _render_item(
    request: Request,
    item: dict,
    mine: dict | None,
    mode: str,
    filters: QueueFilter,
    error: str | None,
    status_code: int = 200,
) -> Response:
    console = request.app.state.console
    return console.render(
        request,
        "item.html",
        {
            "item": item,
            "mode": mode,
            "blind": console.settings.blind,
            "segments": _segments(item.get("segments")),
            "metadata": _metadata_rows(item.get("parquet_metadata")),
            "mine": mine,
            "error": error,
            "decisions": DECISION_LABELS,
            "reason_required": sorted(console.settings.reason_required_for),
            "filter_query": filter_query(filters),
        },
        status_code=status_code,
    )


def _message(request: Request, title: str, message: str, status_code: int) -> Response:
    return request.app.state.console.render(
        request, "message.html", {"title": title, "message": message}, status_code=status_code
    )


def _taken(request: Request) -> Response:
    """What an RA gets for an item that is not theirs to see: the item page, its claim and its
    decision form all answer the same."""
    message = "Another RA has this item open or has decided it. Take the next one from the queue."
    return _message(request, "Item taken", message, 409)


def _segments(raw) -> list[dict]:
    """Timed segments as {start, end, text}; anything malformed is dropped, not shown raw."""
    segments = []
    for segment in raw if isinstance(raw, list) else []:
        try:
            segments.append(
                {"start": float(segment["start"]), "end": float(segment["end"]), "text": str(segment["text"])}
            )
        except (KeyError, TypeError, ValueError):
            continue
    return segments


def _metadata_rows(raw) -> list[tuple[str, str]]:
    if not isinstance(raw, dict):
        return []
    return [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in sorted(raw.items())]


@signed_in(form=True)
def claim_item(request: Request) -> Response:
    console, ra = request.app.state.console, request.state.ra
    item_id = _item_id(request)
    query = filter_query(queue_filter(request))
    if not console.store.claim(ra.ra_user_id, item_id) and console.store.my_decision(ra.ra_user_id, item_id) is None:
        return _taken(request)
    return RedirectResponse(f"/items/{item_id}?{query}", status_code=303)


@signed_in(form=True)
def record_decision(request: Request) -> Response:
    """1 / 2 / 3 on the item page; then the next item in the RA's queue is claimed and opened.
    The RA must hold the item (or have decided it, or claim it now) before anything else: the
    form's own errors re-render the item, which its page shows nobody else."""
    console, ra = request.app.state.console, request.state.ra
    item_id = _item_id(request)
    filters = queue_filter(request)
    form = request.state.form
    decision = inputs.text(form.get("decision"), "decision", max_length=32)
    reason = inputs.text(form.get("reason"), "reason", max_length=MAX_REASON, lines=True).strip()
    policy_version = inputs.text(form.get("policy_version"), "policy_version", max_length=64)
    item = console.store.item(item_id)
    if item is None:
        return Response("no such item", status_code=404, media_type="text/plain")
    mine = console.store.my_decision(ra.ra_user_id, item_id)
    if mine is None and not (
        console.store.holds_claim(ra.ra_user_id, item_id) or console.store.claim(ra.ra_user_id, item_id)
    ):
        return _taken(request)
    error = None
    if decision not in DECISIONS:
        error = "Choose a decision: 1 violates, 2 does not violate, 3 unsure."
    elif decision in console.settings.reason_required_for and not reason:
        error = f"A reason is required for “{DECISION_LABELS[decision]}”."
    elif not console.store.record_decision(ra.ra_user_id, item_id, policy_version, decision, reason):
        error = "The item was re-scored since you opened it; review it again as it is now."
        item = console.store.item(item_id) or item
    if error:
        return _render_item(request, item, mine, "decide", filters, error, status_code=422)
    return _open_neighbour(request, item_id, "next", filters)


@signed_in(form=True)
def next_item(request: Request) -> Response:
    return _open_neighbour(request, _item_id(request), "next", queue_filter(request))


@signed_in(form=True)
def previous_item(request: Request) -> Response:
    return _open_neighbour(request, _item_id(request), "prev", queue_filter(request))


def _open_neighbour(request: Request, item_id: int, direction: str, filters: QueueFilter) -> Response:
    """n / p: claim and open the item after (before) this one in the RA's queue order; the
    queue when there is none (or every candidate was taken meanwhile)."""
    console, ra = request.app.state.console, request.state.ra
    queue = console.store.queue(ra.ra_user_id, filters, limit=10_000)
    current = console.store.item(item_id)
    here = (current["flagged_at"], item_id) if current else None
    keyed = [((row["flagged_at"], row["item_id"]), row["item_id"]) for row in queue]
    if direction == "next":
        later = [i for key, i in keyed if here is None or key > here]
        candidates = later + [i for key, i in keyed if i not in later and i != item_id]
    else:
        candidates = [i for key, i in reversed(keyed) if here is not None and key < here]
    query = filter_query(filters)
    for target in candidates[:NEIGHBOURS_TRIED]:
        if console.store.claim(ra.ra_user_id, target):
            return RedirectResponse(f"/items/{target}?{query}", status_code=303)
    return RedirectResponse(f"/queue?{query}", status_code=303)


@signed_in(api=True)
def audio(request: Request) -> Response:
    console = request.app.state.console
    key = console.store.audio_key(inputs.record_id(request.path_params["audio_file_id"], "audio file id"))
    size = console.audio.size(key) if key else None
    if size is None:
        return Response("no audio for this item", status_code=404, media_type="text/plain")
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store"}
    try:
        byte_range = parse_range(request.headers.get("range"), size)
    except UnsatisfiableRange:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if byte_range is None:
        status, length = 200, size
    else:
        status, length = 206, byte_range.length
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="audio/ogg")
    return StreamingResponse(
        console.audio.stream(key, byte_range), status_code=status, headers=headers, media_type="audio/ogg"
    )


@signed_in()
def search_page(request: Request) -> Response:
    console = request.app.state.console
    words = inputs.text(request.query_params.get("q"), "q", max_length=MAX_SEARCH).strip()
    results = console.store.search(words) if words else []
    for row in results:
        row["snippet_parts"] = _marked_parts(row["snippet"] or "")
    return console.render(request, "search.html", {"words": words, "results": results})


def _marked_parts(snippet: str) -> list[tuple[str, bool]]:
    """ts_headline's \\x01match\\x02 markers as (text, is_match) pieces for the template to
    escape and wrap in <mark>: the markers are characters a transcript does not carry."""
    parts: list[tuple[str, bool]] = []
    for chunk in snippet.split("\x01"):
        matched, _, rest = chunk.partition("\x02") if "\x02" in chunk else ("", "", chunk)
        if matched:
            parts.append((matched, True))
        if rest:
            parts.append((rest, False))
    return parts


@signed_in()
def stats_page(request: Request) -> Response:
    """A lead sees everyone's figures; an RA their own decisions and team precision over
    items they can no longer code, so the page cannot break double-coding blindness."""
    console, ra = request.app.state.console, request.state.ra
    figures = console.store.lead_stats() if ra.is_lead else console.store.ra_stats(ra.ra_user_id)
    return console.render(
        request,
        "stats.html",
        {
            **figures,
            "lead": ra.is_lead,
            "double_coding_percent": console.settings.double_coding_percent,
        },
    )


@signed_in()
def sessions_page(request: Request) -> Response:
    """The RA's live sessions: a sign-in elsewhere (another browser, another address) shows
    here, and one button ends every session but this one."""
    console, ra = request.app.state.console, request.state.ra
    sessions = console.store.sessions_of(ra.ra_user_id)
    for row in sessions:
        row["this_one"] = row["token_sha256"] == ra.token_sha256
    return console.render(request, "sessions.html", {"sessions": sessions})


@signed_in(form=True)
def end_other_sessions(request: Request) -> Response:
    console, ra = request.app.state.console, request.state.ra
    console.store.end_other_sessions(ra.ra_user_id, ra.token_sha256)
    return RedirectResponse("/sessions", status_code=303)
