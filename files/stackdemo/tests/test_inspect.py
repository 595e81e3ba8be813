"""`celery inspect` through the monitoring user, against a worker with remote_control.

The monitor is the plain celery command line with only the monitoring user's
credentials; the worker answers read-only inspect commands and nothing else:
a shutdown sent on the same channel is not obeyed. test_zz_acl then finds no
ACL denial, so the grants of both (worker_remote_control, monitor) suffice.
"""

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BROKER_DB, INSPECTED_WORKER_USER, MONITOR_USER, RESULT_DB
from helpers import stop_process, wait_until

QUEUE = "crash"
NODE = f"inspected@{socket.gethostname()}"


@pytest.fixture(scope="module")
def inspected(
    redis_server, start_worker, configs, tmp_path_factory
) -> Iterator[tuple[subprocess.Popen, Path]]:
    config = json.loads(configs["worker"].read_text())
    config["remote_control"] = True
    config["broker_url"] = redis_server.url(INSPECTED_WORKER_USER, BROKER_DB)
    config["result_backend"] = redis_server.url(INSPECTED_WORKER_USER, RESULT_DB)
    path = tmp_path_factory.mktemp("inspect") / "worker.json"
    path.write_text(json.dumps(config))
    # A queue nothing is sent to while this module runs (the crash tests ran before).
    proc, log = start_worker("inspected", queues=QUEUE, concurrency=1, config=path)
    yield proc, log
    stop_process(proc)


def _celery(
    redis_server, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    broker = redis_server.url(MONITOR_USER, BROKER_DB)
    return subprocess.run(
        [sys.executable, "-m", "celery", "--broker", broker, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_inspect_ping_answers_through_the_monitoring_user(redis_server, inspected):
    node = NODE
    result = _celery(redis_server, "inspect", "ping", "--destination", node, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {node: {"ok": "pong"}}


def test_inspect_stats_and_active(redis_server, inspected):
    node = NODE
    for command in ("stats", "active", "registered", "active_queues"):
        result = _celery(
            redis_server, "inspect", command, "--destination", node, "--json"
        )
        assert result.returncode == 0, (command, result.stdout + result.stderr)
        replies = json.loads(result.stdout.strip().splitlines()[-1])
        assert list(replies) == [node], (command, replies)
    # stats carries the broker connection, never its password.
    assert INSPECTED_WORKER_USER[1] not in result.stdout


def test_control_commands_are_not_obeyed(redis_server, inspected):
    proc, log = inspected
    node = NODE
    for command in (["control", "shutdown"], ["inspect", "conf"]):
        result = _celery(
            redis_server, *command, "--destination", node, "--timeout", "2"
        )
        # The asker is told, rather than left waiting for an answer.
        assert "refused: this worker answers read-only" in result.stdout, (
            command,
            result.stdout + result.stderr,
        )
    wait_until(
        lambda: "remote command 'conf' refused" in log.read_text(),
        "the worker to refuse the settings dump",
        log=log,
    )
    assert "remote command 'shutdown' refused" in log.read_text()
    assert proc.poll() is None
    result = _celery(redis_server, "inspect", "ping", "--destination", node, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
