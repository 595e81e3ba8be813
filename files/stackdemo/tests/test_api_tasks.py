"""POST /api/tasks/<name> and GET /api/tasks/<id> against the real stack."""

import time
import uuid
from datetime import UTC, datetime, timedelta

ADD = "stackdemo.tasks.add"
ECHO = "stackdemo.tasks.sleep_then_echo"


def test_submit_then_status_then_wait(web):
    resp = web.post_json(f"/api/tasks/{ADD}", {"args": [20, 22]})
    assert resp.status == 202, resp.text
    body = resp.json()
    task_id = body["task_id"]
    assert body["status_url"] == f"/api/tasks/{task_id}"
    assert resp.headers["Location"] == body["status_url"]
    assert web.wait(task_id) == {"task_id": task_id, "state": "SUCCESS", "result": 42}
    # Without ?wait the stored state is answered at once.
    assert web.get(body["status_url"]).json()["result"] == 42


def test_kwargs_and_explicit_queue(web):
    task_id = web.submit(
        ECHO, kwargs={"value": {"k": [1, 2]}, "seconds": 0}, queue="celery"
    )
    assert web.wait(task_id)["result"] == {"k": [1, 2]}


def test_unknown_id_is_pending(web):
    task_id = str(uuid.uuid4())
    assert web.get(f"/api/tasks/{task_id}").json() == {
        "task_id": task_id,
        "state": "PENDING",
        "result": None,
    }


def test_failure_reports_the_error_text(web):
    task_id = web.submit(ADD, args=["a", 1])
    body = web.wait(task_id)
    assert body["state"] == "FAILURE"
    assert body["result"] is None
    assert body["error"] == "TypeError: x must be a number, got str"


def test_link_runs_an_allowed_callback(web):
    resp = web.post_json(
        f"/api/tasks/{ADD}",
        {"args": [1, 2], "link": {"task": ADD, "args": [10]}},
    )
    assert resp.status == 202, resp.text
    body = resp.json()
    assert web.wait(body["task_id"])["result"] == 3
    # The callback gets the parent's result as its first argument.
    assert web.wait(body["link_task_id"])["result"] == 13


def test_wait_runs_out_with_504(web):
    task_id = web.submit(ECHO, args=["slow", 2])
    resp = web.get(f"/api/tasks/{task_id}?wait=0.3")
    assert resp.status == 504
    body = resp.json()
    assert body["task_id"] == task_id
    assert body["state"] in ("PENDING", "STARTED")
    assert "not finished within 0.3 s" in body["error"]
    assert web.wait(task_id)["result"] == "slow"


def test_wait_parameter_is_validated(web):
    task_id = str(uuid.uuid4())
    for wait in ("31", "-1", "soon", "nan"):
        resp = web.get(f"/api/tasks/{task_id}?wait={wait}")
        assert resp.status == 400, wait
        assert "wait" in resp.json()["error"]


def test_bad_task_id_is_rejected(web):
    resp = web.get("/api/tasks/not%20an%20id")
    assert resp.status == 400
    assert "task id" in resp.json()["error"]


def test_countdown_is_honoured(web):
    countdown = 3
    started = time.monotonic()
    task_id = web.submit(ADD, args=[1, 1], countdown=countdown)
    state = web.get(f"/api/tasks/{task_id}").json()["state"]
    # Only meaningful if we asked before the countdown could have elapsed;
    # a slow machine skips the check rather than failing.
    if time.monotonic() - started < countdown:
        assert state == "PENDING"
    assert web.wait(task_id) == {"task_id": task_id, "state": "SUCCESS", "result": 2}


def test_eta_slightly_in_the_past_runs_now(web):
    eta = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    task_id = web.submit(ADD, args=[2, 2], eta=eta)
    assert web.wait(task_id)["result"] == 4


def test_expired_task_is_revoked(web):
    # The message becomes due after it has expired, so the worker drops it.
    task_id = web.submit(ADD, args=[1, 2], countdown=2, expires=1)
    body = web.wait(task_id)
    assert body["state"] == "REVOKED"
    assert body["result"] is None
    assert "expired" in body["error"].lower()
