"""A user's own Celery project deployed instead of the demo (molecule/byo).

The hosts run tests/example_project: its app named by celery_worker_app, its tasks on two pools,
its own locked dependency installed from the controller's wheelhouse. A plain Celery client,
configured as docs/clients.md says and holding only the web tier's credentials, drives a chain, a
group, chords (one whose header fails), a retried task and an ETA task through the deployed
stack; the front serves the project's tasks by name; Redis records no ACL denial. Runs only on
hosts whose inventory names a project (conftest.py selects it).
"""

import json
import os
import shlex
from urllib.parse import quote

import pytest
from stackcheck import http_get, http_request, redis_cli, redis_endpoint, web_url

VENV_PYTHON = "/opt/stackdemo/venv/bin/python"

# A producer of the user's: nothing of the stack's app, only the documented settings.
CLIENT = r"""
import json, sys, time
from datetime import datetime, timedelta, timezone
from celery import Celery, chain, chord, group
from kombu import Queue

config = json.load(open("/etc/stackdemo/web.json"))
app = Celery("a-users-django-app", broker=config["broker_url"], backend=config["result_backend"])
app.conf.update(
    task_serializer="json", result_serializer="json",
    accept_content=["json"], result_accept_content=["json"],
    task_queues=[Queue("celery", no_declare=True), Queue("canvas", no_declare=True)],
    task_routes={
        "exampleproj." + name: {"queue": "canvas"} for name in ("total", "retried", "ordinal")
    },
)
WAIT = 60
def task(name, *args):
    return app.signature("exampleproj." + name, args=args)
out = {}
out["chain"] = chain(task("add", 1, 2), task("add", 3), task("add", 4)).apply_async().get(timeout=WAIT)
out["group"] = group(task("add", n, n) for n in range(6)).apply_async().get(timeout=WAIT)
out["chord"] = chord([task("add", n, 1) for n in range(5)])(task("total")).get(timeout=WAIT)
failing = chord([task("add", 1, 1), task("fail", "header broke")])(task("total"))
failing.get(timeout=WAIT, propagate=False)
out["failing_chord"] = [failing.state, str(failing.result)]
out["retried"] = task("retried", 2).apply_async().get(timeout=WAIT)
sent = time.monotonic()
eta = datetime.now(timezone.utc) + timedelta(seconds=3)
out["eta"] = [task("add", 20, 22).apply_async(eta=eta).get(timeout=WAIT), time.monotonic() - sent]
out["ordinal"] = task("ordinal", 42).apply_async().get(timeout=WAIT)
child = task("spawn", 41).apply_async().get(timeout=WAIT)
out["spawned"] = app.AsyncResult(child).get(timeout=WAIT)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def aio(group):
    return group("celery_workers")[0]


def test_the_project_is_installed_beside_the_stack_with_its_own_dependency(aio):
    listed = json.loads(aio.check_output(f"{VENV_PYTHON} -m pip list --format json"))
    packages = {p["name"].lower(): p["version"] for p in listed}
    assert packages.get("exampleproj") == "1.0.0"
    # From the project's own lock, fetched on the controller: the host has no package index.
    assert packages.get("inflection") == "0.5.1"
    assert "stackdemo" in packages
    assert aio.run(f"{VENV_PYTHON} -m pip check").rc == 0


def test_both_pools_run_the_projects_app(aio, pool_names):
    assert sorted(pool_names) == ["canvas", "default"]
    for pool in pool_names:
        unit = aio.service(f"celery-worker@{pool}")
        assert unit.is_running, pool
        # The banner of the pool's last start names the project's app, not the demo's.
        journal = f"journalctl -u celery-worker@{pool} -o cat --no-pager"
        banner = aio.check_output(f"{journal} | grep -m1 -a 'app:' || true")
        assert "exampleproj" in banner, banner


def test_a_plain_celery_client_runs_the_projects_canvas(aio):
    result = aio.run(f"{VENV_PYTHON} -c {shlex.quote(CLIENT)}")
    assert result.rc == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["chain"] == 10
    assert out["group"] == [0, 2, 4, 6, 8, 10]
    assert out["chord"] == 15
    # The failing header fails the chord's body instead of leaving it waiting for ever.
    state, error = out["failing_chord"]
    assert state == "FAILURE" and "header broke" in error, out["failing_chord"]
    assert out["retried"] == 2
    value, waited = out["eta"]
    assert value == 42 and waited >= 2.5, out["eta"]
    assert out["ordinal"] == "42nd"
    assert out["spawned"] == 42


def test_the_front_serves_the_projects_tasks_by_name(aio):
    status, body = http_request(aio, web_url(aio, "/api/tasks/exampleproj.add"), {"args": [20, 22]})
    assert status == 202, body
    status, answer = http_get(aio, web_url(aio, f"/api/tasks/{body['task_id']}?wait=30"))
    assert status == 200 and answer["state"] == "SUCCESS" and answer["result"] == 42, answer
    # The demo is not deployed: its task and the seed's /add are not served.
    assert http_request(aio, web_url(aio, "/api/tasks/stackdemo.tasks.add"), {"args": [1, 2]})[0] == 404
    assert http_get(aio, web_url(aio, "/add?x=1&y=2"))[0] == 404


def test_beat_sends_the_projects_periodic_task(aio):
    # add(0, 0) every 10 s, from the inventory's beat schedule; nothing else adds 0 and 0.
    journal = "journalctl -u 'celery-worker@*' -o cat --no-pager"
    pattern = r"'exampleproj.add\[.*\] succeeded in [0-9.e-]*s: 0$'"
    runs = aio.check_output(f"{journal} | grep -c {pattern} || true")
    assert int(runs or 0) > 0


def test_celery_inspect_answers_through_the_monitoring_user(aio, worker_config, secrets_dir, pool_names):
    """The monitoring user asks, every pool answers; a control command is not obeyed."""
    with open(os.path.join(secrets_dir, "redis-monitor")) as secret:
        password = secret.read().strip()
    address, port, *_ = redis_endpoint(worker_config["broker_url"])
    broker = f"redis://stack-monitor:{quote(password, safe='')}@{address}:{port}/1"
    celery = f"/opt/stackdemo/venv/bin/celery --broker {shlex.quote(broker)}"
    hostname = aio.check_output("hostname")
    nodes = {f"{pool}@{hostname}" for pool in pool_names}
    pong = aio.run(f"{celery} inspect ping --json --timeout 10")
    assert pong.rc == 0, pong.stdout + pong.stderr
    assert json.loads(pong.stdout.strip().splitlines()[-1]) == {node: {"ok": "pong"} for node in nodes}
    stats = aio.run(f"{celery} inspect stats --json --timeout 10")
    assert stats.rc == 0 and set(json.loads(stats.stdout.strip().splitlines()[-1])) == nodes
    assert password not in stats.stdout
    aio.run(f"{celery} control shutdown --timeout 2")
    for pool in pool_names:
        journal = aio.check_output(f"journalctl -u celery-worker@{pool} -o cat --no-pager")
        assert "remote command 'shutdown' refused" in journal, pool
        assert "Warm shutdown" not in journal.rsplit("ready.", 1)[-1], pool


def test_no_acl_denial(aio, worker_config, admin):
    """Everything above needed nothing beyond the tiers' grants."""
    url = worker_config["broker_url"]
    result = redis_cli(aio, url, "--json", "ACL", "LOG", user=admin[0], password=admin[1])
    assert result.rc == 0, result.stderr
    assert json.loads(result.stdout or "[]") == [], result.stdout[-3000:]
