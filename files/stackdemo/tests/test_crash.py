"""A worker killed hard loses no task, and a task that finished never runs twice."""

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

from helpers import wait_until

ECHO = "stackdemo.tasks.sleep_then_echo"
QUEUE = "crash"
NODE = f"crash@{socket.gethostname()}"
UNACKED = f"unacked@{NODE}"
UNACKED_INDEX = f"unacked_index@{NODE}"
IN_FLIGHT = f"inflight@{NODE}@{QUEUE}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid follows the command name, which may contain spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _kill_hard(proc) -> None:
    """What systemd does once a pool's main process died: SIGKILL the rest."""
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(15)
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _runs(log: Path, task_id: str) -> int:
    return len(re.findall(rf"\[{task_id}\] succeeded", log.read_text(errors="replace")))


def test_task_of_a_killed_pool_runs_again_when_the_pool_restarts(
    web, broker_db, start_worker
):
    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    task_id = web.submit(ECHO, args=["survivor", 15], queue=QUEUE)
    wait_until(lambda: f"[{task_id}] received" in log.read_text(), "receipt", log=log)
    _kill_hard(proc)
    # Left behind in this node's own unacked hash, not in a shared one.
    assert broker_db.hlen(UNACKED) == 1
    assert broker_db.llen(QUEUE) == 0

    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    assert "Requeued 0 message(s) left in flight and 1 unacked" in log.read_text()
    meta = web.wait(task_id, 30)
    assert meta["state"] == "SUCCESS"
    assert meta["result"] == "survivor"
    wait_until(lambda: _runs(log, task_id) == 1, "the run to be logged", log=log)
    wait_until(lambda: broker_db.hlen(UNACKED) == 0, "the message to be acked")
    assert broker_db.llen(IN_FLIGHT) == 0
    _kill_hard(proc)


def _messages_for_later(web, broker_db, count: int) -> list[tuple[str, bytes]]:
    """(task id, raw message) of tasks submitted now and taken out of the queue."""
    messages = []
    for _ in range(count):
        task_id = web.submit(ECHO, args=["in flight", 0], queue=QUEUE)
        messages.append((task_id, broker_db.rpop(QUEUE)))
    return messages


def _freeze_with_a_message_on_its_way(proc, broker_db, messages) -> str:
    """Freeze the pool's main process while its idle wait (BLMOVE) is pending.

    Redis then hands the next message to a process that will never read it:
    the moment at which a plain pop (kombu's BRPOP) loses a message to a kill.
    The message is pushed straight after the freeze (not submitted through the
    web, whose answer can take longer than the wait under load). The wait lasts
    a quarter of a second, so a freeze may land between two waits; the message
    is then consumed normally and the freeze is retried with the next one.
    """
    for task_id, raw in messages:
        proc.send_signal(signal.SIGSTOP)
        broker_db.lpush(QUEUE, raw)
        time.sleep(0.5)
        if broker_db.llen(IN_FLIGHT) == 1:
            return task_id
        proc.send_signal(signal.SIGCONT)
        wait_until(lambda: broker_db.llen(QUEUE) == 0, "the message to be consumed")
    raise AssertionError("never froze the pool during its wait")


def test_message_popped_by_a_pool_killed_before_reading_it_runs_once(
    web, broker_db, start_worker
):
    messages = _messages_for_later(web, broker_db, 20)
    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    try:
        task_id = _freeze_with_a_message_on_its_way(proc, broker_db, messages)
    finally:
        _kill_hard(proc)
    # Out of its queue, never recorded as unacknowledged: only in flight.
    assert broker_db.llen(QUEUE) == 0
    assert broker_db.hlen(UNACKED) == 0
    assert broker_db.llen(IN_FLIGHT) == 1

    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    assert "Requeued 1 message(s) left in flight and 0 unacked" in log.read_text()
    assert web.wait(task_id, 30)["result"] == "in flight"
    wait_until(lambda: _runs(log, task_id) == 1, "the run to be logged", log=log)
    assert broker_db.llen(IN_FLIGHT) == 0
    _kill_hard(proc)


def test_redelivered_task_that_already_finished_is_not_run_again(
    web, broker_db, start_worker
):
    # The message exactly as a producer sent it, read before anyone consumes it.
    task_id = web.submit(ECHO, args=["once", 0], queue=QUEUE)
    raw = json.loads(broker_db.lindex(QUEUE, 0))
    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    assert web.wait(task_id, 30)["result"] == "once"
    wait_until(lambda: _runs(log, task_id) == 1, "the run to be logged", log=log)
    # A worker that died after storing the result but before its ack leaves
    # the message in its unacked hash.
    _kill_hard(proc)
    tag = raw["properties"]["delivery_tag"]
    broker_db.hset(UNACKED, tag, json.dumps([raw, "", QUEUE]))
    broker_db.zadd(UNACKED_INDEX, {tag: 1})

    proc, log = start_worker("crash", queues=QUEUE, concurrency=1)
    wait_until(
        lambda: "redelivered copy skipped" in log.read_text(),
        "the redelivered copy to be skipped",
        log=log,
    )
    assert _runs(log, task_id) == 0
    assert web.wait(task_id, 5)["result"] == "once"
    wait_until(lambda: broker_db.hlen(UNACKED) == 0, "the copy to be acked")
    _kill_hard(proc)
