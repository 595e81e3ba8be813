"""Every rejected submission gets a 4xx JSON error saying what is wrong."""

import http.client
import json
from datetime import UTC, datetime, timedelta

import pytest

from conftest import MAX_BODY_BYTES, VISIBILITY_TIMEOUT

ADD = "stackdemo.tasks.add"


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"args": [NaN, 1]}', "not valid JSON"),
        (
            b'{"args": [1, 2], "retries": 3}',
            "unknown key(s) in request body: 'retries'",
        ),
        (b'{"args": {"x": 1}}', "args must be a JSON array"),
        (b'{"kwargs": [1]}', "kwargs must be a JSON object"),
    ],
)
def test_malformed_bodies(web, body, message):
    resp = web.request("POST", f"/api/tasks/{ADD}", body=body)
    assert resp.status == 400
    assert message in resp.json()["error"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"countdown": "5"}, "countdown must be a number of seconds >= 0"),
        ({"countdown": -1}, "countdown must be a number of seconds >= 0"),
        ({"countdown": True}, "countdown must be a number of seconds >= 0"),
        ({"countdown": VISIBILITY_TIMEOUT + 1}, "visibility timeout"),
        ({"countdown": 1, "eta": _at(10)}, "either countdown or eta"),
        ({"eta": 1700000000}, "eta must be an ISO 8601 date-time string"),
        ({"eta": "tomorrow"}, "eta must be an ISO 8601 date-time"),
        ({"eta": "2030-01-01T00:00:00"}, "eta must include a UTC offset"),
        ({"eta": _at(-120)}, "in the past"),
        ({"eta": _at(VISIBILITY_TIMEOUT * 10)}, "visibility timeout"),
        ({"expires": 0}, "expires must be a number of seconds > 0"),
        ({"expires": "2001-01-01T00:00:00Z"}, "expires is in the past"),
        ({"expires": [1]}, "expires must be seconds from now"),
        (
            {"queue": "nope"},
            "queue must be one of the configured queues: canvas, celery, crash, prio",
        ),
        ({"queue": 1}, "queue must be one of the configured queues"),
        ({"priority": 10}, "priority must be an integer from 0 to 9"),
        ({"priority": -1}, "priority must be an integer from 0 to 9"),
        ({"priority": 1.5}, "priority must be an integer from 0 to 9"),
        ({"priority": True}, "priority must be an integer from 0 to 9"),
        ({"priority": "1"}, "priority must be an integer from 0 to 9"),
        ({"link": "celery.backend_cleanup"}, "link must name an allowed task"),
        ({"link": {"task": "os.system"}}, "link must name an allowed task"),
        ({"link": 5}, "link must be a task name or"),
        ({"link": {"task": ADD, "queue": "x"}}, "unknown key(s) in link: 'queue'"),
        ({"link": {"task": ADD, "args": 1}}, "link.args must be a JSON array"),
    ],
)
def test_invalid_fields(web, payload, message):
    resp = web.post_json(f"/api/tasks/{ADD}", {"args": [1, 2], **payload})
    assert resp.status == 400, resp.text
    assert message in resp.json()["error"]


@pytest.mark.parametrize("name", ["nope", "celery.backend_cleanup", "stackdemo.tasks"])
def test_tasks_outside_the_allow_list_are_not_found(web, name):
    resp = web.post_json(f"/api/tasks/{name}", {"args": [1, 2]})
    assert resp.status == 404
    assert resp.json() == {"error": f"unknown task {name!r}"}


def test_body_over_the_limit_is_413(web):
    padding = "x" * MAX_BODY_BYTES
    resp = web.post_json(f"/api/tasks/{ADD}", {"args": [1, 2], "pad": padding})
    assert resp.status == 413
    assert f"larger than {MAX_BODY_BYTES} bytes" in resp.json()["error"]


def test_chunked_body_over_the_limit_is_413(web):
    # No Content-Length: the handler has to count while it streams.
    chunk = b" " * 1024
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/api/tasks/{ADD}",
            body=iter([b'{"args": [1, 2]}'] + [chunk] * (MAX_BODY_BYTES // 1024 + 1)),
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 413
        assert "larger than" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_other_errors_are_json_too(web):
    resp = web.get("/nowhere")
    assert resp.status == 404
    assert resp.json() == {"error": "not found"}
    resp = web.request("PUT", "/add?x=1&y=2")
    assert resp.status == 405
    assert resp.json() == {"error": "method not allowed"}


def test_still_serving_after_bad_requests(web):
    # Runs after the cases above in this module.
    assert web.get("/add?x=40&y=2").json()["result"] == 42
