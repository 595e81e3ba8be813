"""Another app's canvas through the stack, from a plain Celery client.

The worker runs a user's own project (tests/example_project, named by the
worker's ``celery_app`` setting) under the stack's worker settings and the worker
tier's ACL user; the client is what a user's own project (a Django
app, a script) would configure: a bare ``Celery()`` with the web tier's
credentials and the settings below, nothing of the demo. Chains, groups,
chords (one whose header fails), retries, ETAs, expiry, rate limits and a
task sending another must all finish; test_zz_acl then finds the ACL log
empty, so the grants cover every Redis command they need.
"""

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery, chain, chord, group
from celery.exceptions import ChordError, TaskRevokedError
from kombu import Queue

from conftest import BROKER_DB, RESULT_DB, WEB_USER, start_web
from helpers import stop_process, wait_until

# What a producer outside the stack sets: JSON only; queues it publishes to
# without declaring them (the workers do: declaring needs rights the web
# tier's user has not); priority lists named as the stack's workers read them.
CLIENT_SETTINGS = {
    "task_queues": [Queue("canvas", no_declare=True)],
    "broker_transport_options": {
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    },
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_routes": {"exampleproj.*": {"queue": "canvas"}},
}
WAIT = 30


@pytest.fixture(scope="module")
def client(redis_server, start_worker, configs, tmp_path_factory) -> Iterator[Celery]:
    config = json.loads(configs["worker"].read_text())
    config["celery_app"] = "exampleproj.celery:app"
    path = tmp_path_factory.mktemp("canvas") / "worker.json"
    path.write_text(json.dumps(config))
    proc, worker_log = start_worker(
        "canvas", queues="canvas", concurrency=4, config=path
    )
    banner = worker_log.read_text()
    assert "exampleproj" in banner and "stackdemo.broker:Transport" in banner
    app = Celery(
        "a-users-project",
        broker=redis_server.url(WEB_USER, BROKER_DB),
        backend=redis_server.url(WEB_USER, RESULT_DB),
        set_as_current=False,
    )
    app.conf.update(CLIENT_SETTINGS)
    app.worker_log = worker_log  # type: ignore[attr-defined]
    yield app
    app.close()
    # Its pool is of no use to the modules after this one: CPU back to them.
    stop_process(proc)


def task(app: Celery, name: str, *args):
    return app.signature(f"exampleproj.{name}", args=args)


def test_a_chain_passes_each_result_on(client):
    flow = chain(
        task(client, "add", 1, 2), task(client, "add", 3), task(client, "add", 4)
    )
    assert flow.apply_async().get(timeout=WAIT) == 10


def test_a_group_gathers_every_result(client):
    result = group(task(client, "add", n, n) for n in range(6)).apply_async()
    assert result.get(timeout=WAIT) == [0, 2, 4, 6, 8, 10]


def test_a_chord_runs_its_body_on_the_header_results(client):
    header = [task(client, "add", n, 1) for n in range(5)]
    assert chord(header)(task(client, "total")).get(timeout=WAIT) == 15


def test_a_chord_whose_header_fails_fails_instead_of_waiting(client):
    header = [task(client, "add", 1, 1), task(client, "fail", "header broke")]
    result = chord(header)(task(client, "total"))
    # The header's error, raised to whoever waits on the chord...
    with pytest.raises(ValueError, match="header broke"):
        result.get(timeout=WAIT)
    # ... and the body itself marked failed, not left pending for ever.
    outcome = result.get(timeout=WAIT, propagate=False)
    assert result.state == "FAILURE"
    assert isinstance(outcome, ChordError) and "header broke" in str(outcome)


def test_a_retried_task_finishes_after_its_retries(client):
    assert task(client, "retried", 2).apply_async().get(timeout=WAIT) == 2


def test_an_eta_holds_the_task_until_then(client):
    sent = time.monotonic()
    eta = datetime.now(UTC) + timedelta(seconds=2)
    assert task(client, "add", 20, 22).apply_async(eta=eta).get(timeout=WAIT) == 42
    assert time.monotonic() - sent >= 1.5


def test_a_task_past_its_expiry_is_revoked_not_run(client):
    result = task(client, "add", 1, 1).apply_async(countdown=3, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)


def test_a_rate_limited_task_runs_every_call(client):
    result = group(task(client, "limited", n) for n in range(10)).apply_async()
    assert result.get(timeout=WAIT) == list(range(10))


def test_a_task_sending_another_from_the_worker(client):
    child_id = task(client, "spawn", 41).apply_async().get(timeout=WAIT)
    assert client.AsyncResult(child_id).get(timeout=WAIT) == 42


def test_the_front_serves_another_app_by_task_name_only(client, configs, tmp_path):
    """With another app's allow-list, the generic API serves that app's tasks."""
    config = json.loads(configs["web"].read_text())
    config["web"]["allowed_tasks"] = ["exampleproj.add", "exampleproj.total"]
    path = tmp_path / "web.json"
    path.write_text(json.dumps(config))
    front = start_web(path, tmp_path)
    try:
        refused = front.post_json("/api/tasks/stackdemo.tasks.add", {"args": [1, 2]})
        assert refused.status == 404, refused.text
        # The seed's /add is the demo's add task: not this app's.
        assert front.get("/add?x=1&y=2").status == 404
        task_id = front.submit("exampleproj.add", args=[20, 22])
        answer = front.wait(task_id)
        assert answer["state"] == "SUCCESS" and answer["result"] == 42, answer
    finally:
        assert front.process is not None
        front.process.terminate()
        front.process.wait(timeout=30)


def test_the_stack_settings_win_over_the_projects_own(client, result_db):
    """exampleproj accepts pickle: the stack's worker does not."""
    pickled = client.send_task("exampleproj.add", args=[1, 2], serializer="pickle")
    wait_until(
        lambda: "untrusted content" in client.worker_log.read_text(),
        "the worker to refuse the pickle message",
    )
    assert result_db.get(f"celery-task-meta-{pickled.id}") is None
    assert task(client, "add", 1, 2).apply_async().get(timeout=WAIT) == 3
