"""Flower and `celery events` through the monitoring user, against a worker with events.

Flower runs as the roles run it: the monitoring app (stackdemo.monitor_app), read
only, basic auth, no periodic "enable events" broadcast. It sees the worker and
its tasks from the events and heartbeats alone, serves the queue depths and its
own process metrics on /metrics, and refuses every action. test_zz_acl then
finds no ACL denial: the grants (worker_events, monitor) suffice.
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Queue

from conftest import BROKER_DB, MONITOR_USER, MONITORED_WORKER_USER, RESULT_DB
from helpers import Web, free_port, stop_process, wait_until
from stackdemo.apps import create_producer_app
from stackdemo.config import load_config

QUEUE = "crash"
# Nothing consumes it while this module runs (test_priority fills it later).
IDLE_QUEUE = "prio"
NODE = f"monitored@{socket.gethostname()}"
FLOWER_AUTH = ("ops", "flower-secret")
# The celery command line with the monitoring app, as the roles run Flower.
MONITOR_CELERY = [sys.executable, "-m", "celery", "--app", "stackdemo.monitor_app"]


@pytest.fixture(scope="module")
def monitored(redis_server, start_worker, configs, tmp_path_factory):
    config = json.loads(configs["worker"].read_text())
    config.update(
        remote_control=True,
        events=True,
        broker_url=redis_server.url(MONITORED_WORKER_USER, BROKER_DB),
        result_backend=redis_server.url(MONITORED_WORKER_USER, RESULT_DB),
    )
    path = tmp_path_factory.mktemp("monitored") / "worker.json"
    path.write_text(json.dumps(config))
    proc, log = start_worker(
        "monitored", queues=QUEUE, concurrency=1, config=path, heartbeat=True
    )
    yield proc, log
    stop_process(proc)


@pytest.fixture(scope="module")
def monitor_config(redis_server, configs, tmp_path_factory) -> Path:
    worker = json.loads(configs["worker"].read_text())
    config = {
        "broker_url": redis_server.url(MONITOR_USER, BROKER_DB),
        "default_queue": worker["default_queue"],
        "task_routes": worker["task_routes"],
        "monitor": {"queues": [QUEUE, IDLE_QUEUE, "celery"]},
    }
    path = tmp_path_factory.mktemp("monitor") / "monitor.json"
    path.write_text(json.dumps(config))
    return path


def _monitor_env(config: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "STACKDEMO_CONFIG": str(config), **extra}


@pytest.fixture(scope="module")
def flower(monitored, monitor_config, tmp_path_factory) -> Iterator[Web]:
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    cmd = [
        *MONITOR_CELERY,
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        "--read_only=true",
        "--enable_events=false",
    ]
    env = _monitor_env(monitor_config, FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH))
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    web = Web(port=port)
    wait_until(
        lambda: _get(web, "/healthcheck")[0] == 200, "Flower", proc=proc, log=log
    )
    yield web
    stop_process(proc)
    # Flower logs no password, not even the monitoring user's.
    text = log.read_text(errors="replace")
    assert MONITOR_USER[1] not in text and FLOWER_AUTH[1] not in text


def _get(
    flower: Web, path: str, auth: tuple[str, str] | None = None, method: str = "GET"
) -> tuple[int | None, str]:
    """(status, body) of one request; (None, "") while nothing listens."""
    headers = {}
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        body = b"" if method == "POST" else None
        response = flower.request(method, path, body=body, headers=headers, timeout=10)
    except OSError:
        return None, ""
    return response.status, response.text


def _send_adds(configs, count: int) -> list[str]:
    producer = create_producer_app(load_config(configs["web"]))
    # As the front publishes: the workers declare the queues, the web may not.
    queue = Queue(QUEUE, no_declare=True)
    try:
        return [
            producer.send_task("stackdemo.tasks.add", args=[n, 1], queue=queue).id
            for n in range(count)
        ]
    finally:
        producer.close()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{(.*)\}})? (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


def test_flower_asks_for_its_password(flower):
    assert _get(flower, "/")[0] == 401
    assert _get(flower, "/api/workers", ("ops", "wrong"))[0] == 401
    assert _get(flower, "/", FLOWER_AUTH)[0] == 200


def test_flower_follows_the_workers_tasks_from_their_events(flower, configs):
    sent = _send_adds(configs, 3)

    def finished():
        status, body = _get(flower, "/api/tasks", FLOWER_AUTH)
        tasks = json.loads(body) if status == 200 else {}
        states = {task_id: tasks.get(task_id, {}).get("state") for task_id in sent}
        return set(states.values()) == {"SUCCESS"} and tasks

    tasks = wait_until(finished, "Flower to see the tasks succeed", timeout=30)
    assert {tasks[task_id]["worker"] for task_id in sent} == {NODE}
    assert {tasks[task_id]["name"] for task_id in sent} == {"stackdemo.tasks.add"}


def test_flower_lists_the_worker_online(flower):
    def online():
        status, body = _get(flower, "/metrics")
        return status == 200 and _metric(body, "flower_worker_online", worker=NODE)

    wait_until(online, "a heartbeat to mark the worker online", timeout=30)
    status, body = _get(flower, "/api/workers?refresh=1", FLOWER_AUTH)
    assert status == 200, body
    # Answered through the pidbox by the read-only remote control.
    assert json.loads(body)[NODE]["stats"]["pool"]["max-concurrency"] == 1


def test_metrics_carry_queue_depths_and_process_figures(flower, redis_server):
    broker = redis_server.client(BROKER_DB)
    # Three messages waiting in the idle queue, two of them at other priorities.
    for key in (IDLE_QUEUE, f"{IDLE_QUEUE}:3", f"{IDLE_QUEUE}:9"):
        broker.lpush(key, json.dumps({"placeholder": key}))
    try:
        status, body = _get(flower, "/metrics")
    finally:
        broker.delete(IDLE_QUEUE, f"{IDLE_QUEUE}:3", f"{IDLE_QUEUE}:9")
    assert status == 200
    assert _metric(body, "stackdemo_celery_broker_up") == 1
    assert _metric(body, "stackdemo_celery_queue_messages", queue=IDLE_QUEUE) == 3
    assert _metric(body, "stackdemo_celery_queue_messages", queue="celery") is not None
    succeeded = _metric(body, "flower_events_total", type="task-succeeded", worker=NODE)
    assert succeeded and succeeded >= 3
    assert _metric(body, "process_resident_memory_bytes") > 0


def test_flower_refuses_every_action(flower, monitored):
    proc, _ = monitored
    for path in (
        f"/api/worker/shutdown/{NODE}",
        f"/api/worker/pool/restart/{NODE}",
        "/api/task/async-apply/stackdemo.tasks.add",
        "/api/task/revoke/00000000-0000-0000-0000-000000000000",
    ):
        status, body = _get(flower, path, FLOWER_AUTH, method="POST")
        assert status == 403, (path, status, body)
    assert proc.poll() is None


def test_celery_events_dumps_the_events(monitored, monitor_config, configs):
    cmd = [*MONITOR_CELERY, "events", "--dump"]
    dump = subprocess.Popen(
        cmd,
        env=_monitor_env(monitor_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(dump.stdout), daemon=True)
    reader.start()
    sent: list[str] = []

    def dumped_a_success():
        # The receiver subscribes some time after its banner: one task a
        # second until the dump shows one succeeding.
        sent.extend(_send_adds(configs, 1))
        time.sleep(1)
        return [
            line
            for line in list(lines)
            if "task succeeded" in line and any(task in line for task in sent)
        ]

    try:
        wait_until(dumped_a_success, "celery events to dump a task", proc=dump)
    finally:
        stop_process(dump)
