"""What operators and the roles rely on: health, metrics, exits, recovery."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import WEB_USER, start_web
from helpers import free_port, wait_until

ECHO = "stackdemo.tasks.sleep_then_echo"
SAMPLE = re.compile(
    r'[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? [0-9.e+-]+|[a-z_]+\{.*le="\+Inf".*\} \d+'
)


def test_healthz(web):
    resp = web.get("/healthz")
    assert resp.status == 200
    assert resp.json() == {"broker": "ok"}


def test_metrics(web):
    web.get("/add?x=1&y=1")
    web.get("/add?x=oops&y=1")
    resp = web.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = resp.text
    assert "# TYPE stackdemo_http_requests_total counter" in text
    assert re.search(
        r'^stackdemo_http_requests_total\{handler="add",method="GET",code="200"\} \d+$',
        text,
        re.M,
    )
    assert 'handler="add",method="GET",code="400"' in text
    assert "# TYPE stackdemo_http_request_duration_seconds histogram" in text
    inf_bucket = (
        'stackdemo_http_request_duration_seconds_bucket{handler="add",le="+Inf"}'
    )
    assert re.search(rf"^{re.escape(inf_bucket)} \d+$", text, re.M)
    assert 'stackdemo_http_request_duration_seconds_count{handler="add"}' in text
    assert "# TYPE stackdemo_result_waits_in_flight gauge" in text
    assert "# TYPE stackdemo_task_submit_errors_total counter" in text
    assert "stackdemo_result_subscriber_connected 1" in text
    assert re.search(r"^process_resident_memory_bytes [1-9]\d*$", text, re.M)
    assert re.search(r"^process_open_fds [1-9]\d*$", text, re.M)
    started = float(re.search(r"^process_start_time_seconds (\S+)$", text, re.M)[1])
    assert time.time() - 3600 < started < time.time()
    assert re.search(r'^stackdemo_queue_messages\{queue="celery"\} \d+$', text, re.M)
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.fullmatch(line), line


def test_wait_survives_a_dropped_subscriber_connection(web, redis_server):
    task_id = web.submit(ECHO, args=["after reconnect", 2])
    channel = f"celery-task-meta-{task_id}"
    admin = redis_server.client(0)
    answer = {}

    def wait() -> None:
        answer["resp"] = web.get(f"/api/tasks/{task_id}?wait=20")

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: admin.pubsub_numsub(channel)[0][1] == 1, "the web to subscribe")
    # Kill the web's pub/sub connection while the request is waiting on it.
    assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
    waiter.join(30)
    resp = answer["resp"]
    assert resp.status == 200, resp.text
    assert resp.json()["result"] == "after reconnect"
    assert "result subscriber connection failed" in web.log.read_text()


@pytest.fixture(scope="module")
def broken_web(redis_server, configs, tmp_path_factory):
    """A web process whose broker URL points at a port nobody listens on."""
    data = json.loads(configs["web"].read_text())
    data["broker_url"] = (
        f"redis://{WEB_USER[0]}:{WEB_USER[1]}@127.0.0.1:{free_port()}/1"
    )
    workdir = tmp_path_factory.mktemp("broken-web")
    path = workdir / "web.json"
    path.write_text(json.dumps(data))
    app = start_web(path, workdir)
    yield app
    if app.process.poll() is None:
        app.process.kill()
        app.process.wait()


def test_healthz_fails_without_broker(broken_web):
    resp = broken_web.get("/healthz")
    assert resp.status == 503
    assert resp.json() == {"broker": "unavailable"}


def test_submit_fails_cleanly_without_broker(broken_web):
    resp = broken_web.post_json("/api/tasks/stackdemo.tasks.add", {"args": [1, 2]})
    assert resp.status == 503
    assert resp.json() == {"error": "could not send the task to the broker"}
    assert "stackdemo_task_submit_errors_total 1" in broken_web.get("/metrics").text


def test_sigterm_stops_the_web_cleanly(broken_web):
    broken_web.process.send_signal(signal.SIGTERM)
    assert broken_web.process.wait(30) == 0
    assert "stopping" in broken_web.log.read_text()


def _bad_config(tmp_path: Path, **extra: object) -> dict[str, str]:
    path = tmp_path / "bad.json"
    extra = extra or {"colour": 1}
    path.write_text(
        json.dumps(
            {"broker_url": "redis://h/1", "result_backend": "redis://h/0", **extra}
        )
    )
    return {**os.environ, "STACKDEMO_CONFIG": str(path)}


def test_web_console_script_rejects_a_bad_config(tmp_path):
    script = Path(sys.executable).with_name("stackdemo-web")
    result = subprocess.run(
        [str(script), "--port", str(free_port())],
        env=_bad_config(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown key(s) in the top level: 'colour'" in result.stderr


def test_worker_refuses_a_bad_config(tmp_path):
    cmd = [sys.executable, "-m", "celery", "-A", "stackdemo.celery_app", "worker"]
    result = subprocess.run(
        cmd, env=_bad_config(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "unknown key(s) in the top level: 'colour'" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("celery_app", "message"),
    [
        ("no_such_project.celery:app", "cannot import no_such_project.celery"),
        ("stackdemo.tasks:app", "stackdemo.tasks has no Celery app named 'app'"),
    ],
)
def test_worker_names_a_celery_app_it_cannot_use(tmp_path, celery_app, message):
    cmd = [sys.executable, "-m", "celery", "-A", "stackdemo.celery_app", "worker"]
    env = _bad_config(tmp_path, celery_app=celery_app)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
