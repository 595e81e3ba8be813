"""Garbage in a queue goes to the dead letters; the worker keeps serving."""

import base64
import json
import re
import time
import uuid

import pytest
import redis

from conftest import BROKER_DB, WEB_USER
from helpers import unacked_messages, wait_until

DEAD = "stack@dead-letters"
TOTAL = "stack@dead-letters-total"


def _envelope(body: str, content_type: str, task: str = "stackdemo.tasks.add") -> bytes:
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0},
            "properties": {
                "correlation_id": task_id,
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


# (what, raw message, reason recorded)
GARBAGE = [
    ("text", b"garbage", "unreadable message: not JSON"),
    ("binary", b"\xff\xfe\x00\x80", "unreadable message: not JSON"),
    ("empty", b"", "unreadable message: not JSON"),
    ("json list", b"[1, 2, 3]", "unreadable message: not a JSON object"),
    ("json string", b'"hello"', "unreadable message: not a JSON object"),
    ("no properties", b'{"body": "e30="}', "unreadable message: no properties"),
    (
        "no delivery tag",
        b'{"body": "", "properties": {"delivery_info": {}}}',
        "unreadable message: no delivery_tag",
    ),
    ("body not json", _envelope("{oops", "application/json"), "rejected by the worker"),
    ("yaml body", _envelope("[1, 2]", "application/x-yaml"), "rejected by the worker"),
    (
        "unknown task",
        _envelope("[[1, 2], {}, {}]", "application/json", task="nope.nope"),
        "rejected by the worker",
    ),
]


@pytest.fixture
def web_producer(redis_server) -> redis.Redis:
    # Any holder of the web's credentials can push anything into a queue.
    return redis_server.client(BROKER_DB, user=WEB_USER)


def _dead_letters(broker_db: redis.Redis) -> list[dict]:
    return [json.loads(item) for item in broker_db.lrange(DEAD, 0, -1)]


def test_garbage_is_dead_lettered_and_the_worker_keeps_serving(
    web, worker, broker_db, web_producer
):
    proc, _ = worker
    broker_db.delete(DEAD, TOTAL)
    for _, raw, _ in GARBAGE:
        web_producer.lpush("celery", raw)
    wait_until(
        lambda: broker_db.llen(DEAD) == len(GARBAGE),
        "every bad message in the dead letters",
    )
    # The same process, still consuming and answering.
    assert proc.poll() is None
    assert web.get("/add?x=2&y=3").json()["result"] == 5
    assert broker_db.llen("celery") == 0
    wait_until(lambda: not unacked_messages(broker_db), "no message left unacked")

    letters = list(reversed(_dead_letters(broker_db)))  # LPUSH: newest first
    assert [letter["reason"] for letter in letters] == [item[2] for item in GARBAGE]
    for letter, (_, raw, _) in zip(letters, GARBAGE, strict=True):
        assert letter["queue"] == "celery"
        if letter["reason"].startswith("unreadable"):
            # Kept byte for byte, so an admin can inspect or requeue it.
            stored = letter["message"]
            kept = (
                base64.b64decode(stored)
                if letter["encoding"] == "base64"
                else stored.encode()
            )
            assert kept == raw
    assert int(broker_db.get(TOTAL)) == len(GARBAGE)

    metrics = web.get("/metrics").text
    assert re.search(rf"^stackdemo_dead_letters {len(GARBAGE)}$", metrics, re.M)
    assert re.search(rf"^stackdemo_dead_letters_moved {len(GARBAGE)}$", metrics, re.M)


def test_an_empty_message_reaching_an_idle_worker_is_dead_lettered(
    web, worker, broker_db, web_producer
):
    # An idle pool waits with BLMOVE, whose reply is the message itself: an
    # empty one must not be taken for "nothing popped" and left in flight.
    broker_db.delete(DEAD, TOTAL)
    assert web.get("/add?x=1&y=1").json()["result"] == 2
    time.sleep(1)  # past the sweep that follows a task: the pool waits idle
    web_producer.lpush("celery", b"")
    wait_until(lambda: broker_db.llen(DEAD) == 1, "the empty message dead-lettered")
    assert _dead_letters(broker_db)[0]["reason"] == "unreadable message: not JSON"
    assert not [key for key in broker_db.keys("inflight@*") if broker_db.llen(key)]
