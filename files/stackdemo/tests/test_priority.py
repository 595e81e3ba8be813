"""Message priority 0-9 picks the Redis list and the order of consumption."""

import json
import re

from helpers import stop_process, unacked_messages, wait_until

ECHO = "stackdemo.tasks.sleep_then_echo"
# (label, priority) in submission order. With Redis, 0 is served first.
SUBMITTED = [
    ("a9", 9),
    ("b0", 0),
    ("c5", 5),
    ("d3", 3),
    ("e9", 9),
    ("f0", 0),
    ("g7", 7),
]


def test_priority_routing_and_order(web, broker_db, start_worker):
    # "prio" has no consumer yet, so every message waits in its list.
    ids = {}
    for label, priority in SUBMITTED:
        ids[label] = web.submit(ECHO, args=[label, 0], queue="prio", priority=priority)

    # kombu keeps priority 0 in "prio" itself and N in "prio:N" (sep ":").
    lengths = {"prio": 2, "prio:3": 1, "prio:5": 1, "prio:7": 1, "prio:9": 2}
    for key, length in lengths.items():
        assert broker_db.llen(key) == length, key
    assert broker_db.llen("prio:1") == 0
    # What operators see of it: one gauge per queue, every priority list counted.
    metrics = web.get("/metrics").text
    assert (
        f'stackdemo_queue_messages{{queue="prio"}} {sum(lengths.values())}\n' in metrics
    )

    # One worker that runs one task at a time makes the order observable.
    proc, log = start_worker("prio", queues="prio", pool="solo", concurrency=1)
    for label, task_id in ids.items():
        assert web.wait(task_id)["result"] == label

    def succeeded() -> list[str]:
        found = re.findall(r"succeeded in [^:]*: '(\w+)'", log.read_text())
        return found if len(found) == len(SUBMITTED) else []

    order = wait_until(succeeded, "the prio worker to log every task", log=log)
    # Lower number first; same priority in submission (FIFO) order.
    expected = [label for label, _ in sorted(SUBMITTED, key=lambda item: item[1])]
    assert order == expected
    stop_process(proc)


def test_waiting_eta_task_is_requeued_when_the_worker_stops(
    web, broker_db, start_worker
):
    proc, log = start_worker("eta", queues="prio", pool="solo", concurrency=1)
    task_id = web.submit(ECHO, args=["later", 0], queue="prio", countdown=90)
    # The worker holds the message, unacknowledged, until its ETA.
    wait_until(lambda: f"[{task_id}] received" in log.read_text(), "receipt", log=log)
    assert broker_db.llen("prio") == 0
    stop_process(proc)
    assert proc.returncode == 0
    # Warm shutdown gives it back instead of waiting for the visibility timeout.
    assert not unacked_messages(broker_db)
    (raw,) = broker_db.lrange("prio", 0, -1)
    assert json.loads(raw)["headers"]["id"] == task_id
    broker_db.delete("prio")
