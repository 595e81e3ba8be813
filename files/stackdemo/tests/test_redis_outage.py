"""A task running when Redis goes away for longer than the result store's retries.

The worker loses its broker connection, stops the task (it will be
redelivered) and must not record anything final about it while Redis is
away: the redelivered copy runs, and the result reaches the web.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    BROKER_DB,
    REDIS_SERVER,
    RESULT_DB,
    WEB_USER,
    WORKER_USER,
    RedisServer,
    _ping,
    _write_config,
    start_web,
    write_redis_config,
)
from helpers import Web, stop_process, wait_until

ECHO = "stackdemo.tasks.sleep_then_echo"
QUEUES = ("celery",)
# Longer than the result store's retries (~12 s) and short of the web's wait bound.
OUTAGE_SECONDS = 20


@dataclass
class Redis:
    server: RedisServer
    conf: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.conf)])
        wait_until(lambda: _ping(self.server), "redis-server to answer", proc=self.proc)

    def stop(self) -> None:
        assert self.proc is not None
        stop_process(self.proc)


@dataclass
class Stack:
    redis: Redis
    web: Web
    worker_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("outage")
    # The broker's persistence: what was queued before the stop is there after it.
    conf, server = write_redis_config(
        workdir, QUEUES, "appendonly yes\nappendfsync always"
    )
    common = {
        "visibility_timeout": 120,
        "result_expires": 600,
        "default_queue": "celery",
    }
    worker_config = _write_config(
        workdir / "worker.json",
        {
            **common,
            "broker_url": server.url(WORKER_USER, BROKER_DB),
            "result_backend": server.url(WORKER_USER, RESULT_DB),
            "add_delay_seconds": 0,
        },
    )
    web_config = _write_config(
        workdir / "web.json",
        {
            **common,
            "broker_url": server.url(WEB_USER, BROKER_DB),
            "result_backend": server.url(WEB_USER, RESULT_DB),
            "web": {"allowed_tasks": [ECHO], "max_wait_seconds": 60},
        },
    )
    redis_server = Redis(server=server, conf=conf)
    redis_server.start()
    worker_log = workdir / "worker.log"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_worker(worker_config, worker_log))
        web = start_web(web_config, workdir)
        assert web.process is not None
        procs.append(web.process)
        yield Stack(redis=redis_server, web=web, worker_log=worker_log)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        redis_server.stop()


def _start_worker(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "STACKDEMO_CONFIG": str(config)}
    cmd = [
        *(sys.executable, "-m", "celery", "-A", "stackdemo.celery_app", "worker"),
        *("-c", "2", "-n", "outage@%h", "-l", "INFO"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_until(
        lambda: " ready." in log.read_text(errors="replace"),
        "the worker to be ready",
        proc=proc,
        log=log,
    )
    return proc


def _runs(log: Path, task_id: str) -> int:
    return len(re.findall(rf"\[{task_id}\] succeeded", log.read_text(errors="replace")))


def test_a_task_running_through_a_long_redis_outage_runs_again_and_finishes(stack):
    task_id = stack.web.submit(ECHO, args=["outlived", 3])
    wait_until(
        lambda: f"[{task_id}] received" in stack.worker_log.read_text(),
        "the task to start",
        log=stack.worker_log,
    )
    stack.redis.stop()
    time.sleep(OUTAGE_SECONDS)
    stack.redis.start()
    meta = stack.web.wait(task_id, 60)
    assert meta["state"] == "SUCCESS", (meta, stack.worker_log.read_text()[-3000:])
    assert meta["result"] == "outlived"
    wait_until(lambda: _runs(stack.worker_log, task_id) == 1, "the run to be logged")
    log = stack.worker_log.read_text(errors="replace")
    assert "Terminating it instead" in log
    # Nothing stored for the stopped run: no RETRY blocking the main process
    # while Redis is away, no revoke once the store gave up.
    assert "Failed to cancel active request" not in log
    assert "revoked" not in log.lower()
    # Still consuming: a task sent now runs.
    assert (
        stack.web.wait(stack.web.submit(ECHO, args=["after", 0]), 30)["state"]
        == "SUCCESS"
    )
