"""The pages an RA works in: queue, item (with its decision form), search and stats.

Handlers are plain functions (Starlette runs them in a thread pool) because the store is
synchronous psycopg2. Everything shown comes from uploaded archives and is rendered through
autoescaped templates; nothing here builds HTML.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from policies import load_policies, policy_names
from review.audio import UnsatisfiableRange, parse_range
from review.auth import csrf_ok, signed_in
from review.settings import DECISIONS
from review.store import QueueFilter

DECISION_LABELS = {"violates": "Violates", "does_not_violate": "Does not violate", "unsure": "Unsure / escalate"}
MAX_REASON = 4000


def queue_filter(request: Request) -> QueueFilter:
    """The queue's filters from the query string; malformed values are ignored, not errors."""
    q = request.query_params

    def number(name: str) -> float | None:
        try:
            return float(q[name]) if q.get(name) else None
        except ValueError:
            return None

    def day(name: str) -> str | None:
        value = q.get(name, "")
        return value if len(value) == 10 and value[4] == "-" and value[7] == "-" and value.replace("-", "").isdigit() else None

    return QueueFilter(
        policy=q.get("policy") or None, model=q.get("model") or None,
        score_min=number("score_min"), score_max=number("score_max"),
        date_from=day("date_from"), date_to=day("date_to"),
    )


def filter_query(filters: QueueFilter) -> str:
    """The filters as a query string, re-encoded from parsed values (never echoed raw)."""
    return urlencode({k: v for k, v in filters.params().items() if v is not None})


@signed_in()
def home(request: Request) -> Response:
    return RedirectResponse("/queue", status_code=303)


@signed_in()
def queue_page(request: Request) -> Response:
    console, ra = request.app.state.console, request.state.ra
    filters = queue_filter(request)
    choices = console.store.filter_choices()
    return console.render(request, "queue.html", {
        "items": console.store.queue(ra.ra_user_id, filters, console.settings.queue_page_size),
        "counts": console.store.queue_counts(),
        "filters": filters,
        "filter_query": filter_query(filters),
        "policies": sorted({c["policy"] for c in choices}),
        "models": sorted({c["classifier_model"] for c in choices}),
    })


@signed_in()
def item_page(request: Request) -> Response:
    console, ra = request.app.state.console, request.state.ra
    item_id = request.path_params["item_id"]
    item = console.store.item(item_id)
    if item is None:
        return console.render(request, "message.html", {"title": "No such item", "message":
                              "This item is not (or no longer) flagged for review."}, status_code=404)
    mine = console.store.my_decision(ra.ra_user_id, item_id)
    if mine is None and not console.store.claim(ra.ra_user_id, item_id):
        return console.render(request, "message.html", {"title": "Item taken", "message":
                              "Another RA has this item open or has decided it. Take the next one from the queue."},
                              status_code=409)
    return _render_item(request, item, mine, error=None)


def _render_item(request: Request, item: dict, mine: dict | None, error: str | None, status_code: int = 200) -> Response:
    console = request.app.state.console
    filters = queue_filter(request)
    return console.render(request, "item.html", {
        "item": item,
        "segments": _segments(item.get("segments")),
        "metadata": _metadata_rows(item.get("parquet_metadata")),
        "policy_text": load_policies([item["policy"]])[item["policy"]] if item["policy"] in policy_names() else None,
        "mine": mine,
        "error": error,
        "decisions": DECISION_LABELS,
        "reason_required": sorted(console.settings.reason_required_for),
        "filter_query": filter_query(filters),
    }, status_code=status_code)


def _segments(raw) -> list[dict]:
    """Timed segments as {start, end, text}; anything malformed is dropped, not shown raw."""
    segments = []
    for segment in raw if isinstance(raw, list) else []:
        try:
            segments.append({"start": float(segment["start"]), "end": float(segment["end"]), "text": str(segment["text"])})
        except (KeyError, TypeError, ValueError):
            continue
    return segments


def _metadata_rows(raw) -> list[tuple[str, str]]:
    if not isinstance(raw, dict):
        return []
    return [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in sorted(raw.items())]


@signed_in()
def record_decision(request: Request) -> Response:
    """1 / 2 / 3 on the item page. `request.state.form` is read by the async route in app.py."""
    console, ra = request.app.state.console, request.state.ra
    item_id = request.path_params["item_id"]
    form = request.state.form
    if not csrf_ok(ra.csrf_token, form.get("csrf_token")):
        return Response("invalid form token; reload the page", status_code=403, media_type="text/plain")
    item = console.store.item(item_id)
    if item is None:
        return Response("no such item", status_code=404, media_type="text/plain")
    decision = str(form.get("decision", ""))
    reason = str(form.get("reason", "")).strip()
    mine = console.store.my_decision(ra.ra_user_id, item_id)
    error = None
    if decision not in DECISIONS:
        error = "Choose a decision: 1 violates, 2 does not violate, 3 unsure."
    elif decision in console.settings.reason_required_for and not reason:
        error = f"A reason is required for “{DECISION_LABELS[decision]}”."
    elif len(reason) > MAX_REASON:
        error = f"Keep the reason under {MAX_REASON} characters."
    elif mine is None and not console.store.claim(ra.ra_user_id, item_id):
        return console.render(request, "message.html", {"title": "Item taken", "message":
                              "Your claim on this item expired and another RA took it."}, status_code=409)
    elif not console.store.record_decision(ra.ra_user_id, item_id, str(form.get("policy_version", "")), decision, reason):
        error = "The item was re-scored since you opened it; review it again as it is now."
        item = console.store.item(item_id) or item
    if error:
        return _render_item(request, item, mine, error, status_code=422)
    return RedirectResponse(f"/items/{item_id}/next?{filter_query(queue_filter(request))}", status_code=303)


@signed_in()
def neighbour_item(request: Request) -> Response:
    """n / p: the item after (before) this one in the RA's queue order; the queue when none."""
    console, ra = request.app.state.console, request.state.ra
    item_id = request.path_params["item_id"]
    direction = request.path_params["direction"]
    if direction not in ("next", "prev"):
        return Response("not found", status_code=404, media_type="text/plain")
    filters = queue_filter(request)
    queue = console.store.queue(ra.ra_user_id, filters, limit=10_000)
    current = console.store.item(item_id)
    here = (current["flagged_at"], item_id) if current else None
    keys = [((row["flagged_at"], row["item_id"]), row["item_id"]) for row in queue]
    if direction == "next":
        later = [i for key, i in keys if here is None or key > here]
        target = later[0] if later else next((i for _, i in keys if i != item_id), None)
    else:
        earlier = [i for key, i in keys if here is not None and key < here]
        target = earlier[-1] if earlier else None
    query = filter_query(filters)
    if target is None:
        return RedirectResponse(f"/queue?{query}", status_code=303)
    return RedirectResponse(f"/items/{target}?{query}", status_code=303)


@signed_in(api=True)
def audio(request: Request) -> Response:
    console = request.app.state.console
    key = console.store.audio_key(request.path_params["audio_file_id"])
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
    return StreamingResponse(console.audio.stream(key, byte_range), status_code=status, headers=headers,
                             media_type="audio/ogg")


@signed_in()
def search_page(request: Request) -> Response:
    console = request.app.state.console
    words = request.query_params.get("q", "").strip()[:200]
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
    console = request.app.state.console
    return console.render(request, "stats.html", {
        **console.store.stats(), "double_coding_percent": console.settings.double_coding_percent,
    })
