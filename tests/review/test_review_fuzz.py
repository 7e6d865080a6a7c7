"""Every input of every route, fed hostile values (issue 17): NUL and control characters,
impossible dates, numbers out of range or thousands of digits long, markup, SQL, invalid
UTF-8. Nothing may answer 5xx; the malformed values the issue found answer 400 with a message.
Results (requests, statuses) go to test-output/review/fuzz.json."""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter

import pytest
from review_support import FlaggedItem, RAClient, http, seed_flagged
from starlette.routing import Mount, Route

HUGE = "9" * 5000  # Python refuses int() of more than 4,300 digits
HOSTILE = [
    "\x00",
    "a\x00b",
    "\x01",
    "\x1b[31m",
    "\x7f",
    "\u0085",
    "line\nbreak",
    HUGE,
    "-1",
    "0",
    "1e309",
    "nan",
    "inf",
    "-0.5",
    "1.0000001",
    "0x10",
    "2024-99-99",
    "2024-02-30",
    "99999-01-01",
    "0000-00-00",
    "2024-1-1",
    "'; DROP TABLE ra_decisions; --",
    "%",
    "\ufffd",
    "\u202e",
    "<script>alert(1)</script>",
    "",
    " ",
    "a" * 3000,
]
# route -> (method, path template, {parameter: (where, valid value)})
ROUTES = {
    "/": ("GET", "/", {}),
    "/sign-in GET": ("GET", "/sign-in", {}),
    "/sign-in POST": (
        "POST",
        "/sign-in",
        {
            "username": ("form", "alice"),
            "password": ("form", "not the password"),
            "csrf_token": ("form", "{sign_in_token}"),
            "ra_sign_in_csrf": ("cookie", "{sign_in_token}"),
        },
    ),
    "/sign-out": ("POST", "/sign-out", {"csrf_token": ("form", "forged")}),
    "/queue": (
        "GET",
        "/queue",
        {
            **{name: ("query", "") for name in ("policy", "model", "score_min", "score_max", "date_from", "date_to")},
            "ra_session": ("cookie", "{session}"),
        },
    ),
    "/items/{item_id}": ("GET", "/items/{item_id}", {"item_id": ("path", "{item}"), "date_from": ("query", "")}),
    "/items/{item_id}/claim": (
        "POST",
        "/items/{item_id}/claim",
        {"item_id": ("path", "{item}"), "csrf_token": ("form", "{csrf}")},
    ),
    "/items/{item_id}/decision": (
        "POST",
        "/items/{item_id}/decision",
        {
            "item_id": ("path", "{item}"),
            "decision": ("form", "unsure"),
            "reason": ("form", "fuzz"),
            "policy_version": ("form", "v1"),
            "csrf_token": ("form", "{csrf}"),
            "score_min": ("query", ""),
        },
    ),
    "/items/{item_id}/next": (
        "POST",
        "/items/{item_id}/next",
        {"item_id": ("path", "{item}"), "policy": ("query", ""), "csrf_token": ("form", "{csrf}")},
    ),
    "/items/{item_id}/prev": (
        "POST",
        "/items/{item_id}/prev",
        {"item_id": ("path", "{item}"), "date_to": ("query", ""), "csrf_token": ("form", "{csrf}")},
    ),
    "/audio/{audio_file_id}": (
        "GET",
        "/audio/{audio_file_id}",
        {"audio_file_id": ("path", "{audio}"), "Range": ("header", "bytes=0-99")},
    ),
    "/search": ("GET", "/search", {"q": ("query", "words")}),
    "/stats": ("GET", "/stats", {}),
    "/calibration": ("GET", "/calibration", {}),
    "/sessions": ("GET", "/sessions", {}),
    "/sessions/end-others": ("POST", "/sessions/end-others", {"csrf_token": ("form", "{csrf}")}),
}
RANGES = [
    f"bytes={HUGE}-",
    f"bytes=0-{HUGE}",
    f"bytes=-{HUGE}",
    "bytes=5-2",
    "bytes=--1",
    "bytes=a-b",
    "bytes=0-1,2-3",
    "bytes=\u0661-\u0662".encode().decode("latin-1"),
    "items=0-1",
    "bytes=" + "0-1," * 500,
]


def test_the_route_table_covers_every_route(start_console, ras):
    server = start_console()
    served = set()
    for route in server.app.routes:
        if isinstance(route, Route):
            served |= {(method, route.path) for method in route.methods - {"HEAD"}}
        else:
            assert isinstance(route, Mount) and route.path == "/static"
    assert served == {(method, path) for method, path, _ in ROUTES.values()}


def _sendable_in_a_header(value: str) -> bool:
    """What an HTTP client can put in a header at all (no control characters, latin-1)."""
    return all(0x20 <= ord(ch) <= 0xFF and ch != "\x7f" for ch in value)


def _request(client: RAClient, method: str, path: str, params: dict, values: dict[str, str]):
    query, form, headers, cookies = {}, {}, {}, {}
    for name, (where, _) in params.items():
        value = values[name]
        if where == "cookie":
            cookies[name] = value
        elif where == "path":
            path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
        elif where == "query":
            query[name] = value
        elif where == "form":
            form[name] = value
        else:
            headers[name] = value
    if query:
        path += "?" + urllib.parse.urlencode(query)
    if cookies:  # these replace the client's own cookies for this request
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    if method == "GET":
        return client.get(path, headers=headers)
    return client.post(path, form, with_token=False, headers=headers)


@pytest.mark.parametrize("signed_in", [True, False], ids=["signed-in", "signed-out"])
def test_no_input_gives_a_server_error(start_console, results_db, object_store, opus_bytes, ras, signed_in, output_dir):
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem(f"f{n}.mp3") for n in range(3)])
    server = start_console(double_coding_percent=0)
    client = RAClient(server.url)
    if signed_in:
        client.sign_in("bob")
    client.get("/sign-in")  # the sign-in form's double-submit cookie, so its fields are reached
    defaults = {
        "{item}": str(items["f0.mp3"].item_id),
        "{audio}": str(items["f0.mp3"].audio_file_id),
        "{csrf}": client.csrf_token,
        "{sign_in_token}": client.cookies["ra_sign_in_csrf"],
        "{session}": client.cookies.get("ra_session", ""),
    }
    statuses, failures, checked = Counter(), [], 0
    for route, (method, path, params) in ROUTES.items():
        valid = {name: defaults.get(value, value) for name, (_, value) in params.items()}
        cases = [dict(valid)] + [
            {**valid, name: value}
            for name in params
            for value in (RANGES if params[name][0] == "header" else HOSTILE)
            if params[name][0] not in ("header", "cookie") or _sendable_in_a_header(value)
        ]
        for values in cases:
            status, _, body = _request(client, method, path, params, values)
            checked += 1
            statuses[status] += 1
            if status >= 500:
                failures.append((route, {k: v[:40] for k, v in values.items()}, status, body[:200]))
    report = {
        "signed_in": signed_in,
        "requests": checked,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": len(failures),
    }
    (output_dir / "fuzz.json").write_text(json.dumps(report, indent=2))
    print(f"\nfuzz ({'signed in' if signed_in else 'signed out'}): {json.dumps(report)}")
    assert failures == []


def test_the_malformed_inputs_of_the_issue_answer_400_with_a_message(
    start_console, results_db, object_store, opus_bytes, ras
):
    """Issue 17: a NUL in search, queue filters, the sign-in user name or a decision reason;
    impossible dates; ids or Range numbers over 4,300 digits: each was a 500."""
    items = seed_flagged(results_db, object_store, opus_bytes, [FlaggedItem("m.mp3")])
    item, audio = items["m.mp3"].item_id, items["m.mp3"].audio_file_id
    server = start_console()
    alice = RAClient(server.url)
    alice.sign_in("alice")
    alice.post(f"/items/{item}/claim")
    nul = urllib.parse.quote("a\x00b")
    for path in (
        f"/search?q={nul}",
        f"/queue?policy={nul}",
        f"/queue?model={nul}",
        "/queue?date_from=2024-99-99",
        "/queue?date_to=2024-02-30",
        "/queue?score_min=1e309",
        "/queue?score_max=2",
        f"/items/{HUGE}",
        f"/audio/{HUGE}",
        f"/items/{item}?date_from={nul}",
    ):
        status, _, body = alice.get(path)
        assert status == 400 and body.startswith(b"bad request: "), (path, status, body[:100])
    status, _, body = alice.post(
        f"/items/{item}/decision", {"decision": "violates", "reason": "a\x00b", "policy_version": "v1"}
    )
    assert status == 400 and b"reason" in body
    status, _, body = alice.post(f"/items/{HUGE}/claim")
    assert status == 400 and b"item id" in body
    signing_in = RAClient(server.url)
    _, _, page = signing_in.get("/sign-in")
    token = page.split(b'name="csrf_token" value="')[1].split(b'"')[0].decode()
    status, _, body = signing_in.post(
        "/sign-in", {"csrf_token": token, "username": "ali\x00ce", "password": "x" * 12}, with_token=False
    )
    assert status == 400 and b"user name" in body
    # A Range number of 5,000 digits is a position past the file: 416 (or the rest of the file).
    assert alice.get(f"/audio/{audio}", headers={"Range": f"bytes={HUGE}-"})[0] == 416
    assert alice.get(f"/audio/{audio}", headers={"Range": f"bytes=0-{HUGE}"})[0] == 206
    assert http(f"{server.url}/audio/{audio}", headers={"Range": f"bytes={HUGE}-"})[0] == 401
