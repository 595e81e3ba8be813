"""A pickle message pushed straight into the queue is refused, not loaded."""

import base64
import json
import pickle
import uuid

from helpers import unacked_messages, wait_until


class _Payload:
    """Unpickling this creates ``path``: proof that pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_message(task_id: str, marker: str) -> bytes:
    # kombu's Redis envelope around a Celery protocol 2 task message.
    body = pickle.dumps(((_Payload(marker), 1), {}, {}), protocol=2)
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {
            "lang": "py",
            "task": "stackdemo.tasks.add",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "argsrepr": "(...)",
            "kwargsrepr": "{}",
            "origin": "test",
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def test_pickle_message_is_rejected_and_worker_keeps_working(
    web, worker, broker_db, result_db, tmp_path
):
    _, worker_log = worker
    marker = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    broker_db.lpush("celery", _pickle_message(task_id, str(marker)))

    def refused() -> bool:
        return "untrusted content" in worker_log.read_text(errors="replace")

    wait_until(refused, "the worker to refuse the pickle message", log=worker_log)
    # The worker is still consuming and answering.
    assert web.get("/add?x=1&y=2").json()["result"] == 3
    assert not marker.exists()
    # Dropped, not left to be redelivered after the visibility timeout.
    wait_until(
        lambda: broker_db.llen("celery") == 0 and not unacked_messages(broker_db),
        "the pickle message to leave the queue",
    )
    # Discarded on receipt: it never became a task with a state.
    assert result_db.get(f"celery-task-meta-{task_id}") is None
