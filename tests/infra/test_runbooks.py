"""The ops runbooks (playbooks/ops), run from the controller as an operator would."""

import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from stackcheck import http_get, http_request, redis_cli, web_url

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.join(os.path.dirname(__file__), "..", ".."))
GONE = "default@gone-for-good"


def playbook(path, *extra, timeout=600):
    """ansible-playbook PROJECT/PATH against this scenario's inventory."""
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory]
    command += [os.path.join(PROJECT, path), *extra]
    # Molecule forces colour on; the assertions read plain text.
    env = {key: value for key, value in os.environ.items() if key != "ANSIBLE_FORCE_COLOR"}
    env.update(ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def runbook(name, *extra):
    """ansible-playbook PROJECT/playbooks/ops/NAME against this scenario's inventory."""
    return playbook(os.path.join("playbooks", "ops", name), *extra)


def admin_cli(redis_host, worker_config, admin, *command):
    """redis-cli as the admin user on the broker database; its output."""
    result = redis_cli(redis_host, worker_config["broker_url"], *command, user=admin[0], password=admin[1])
    assert result.rc == 0 and "ERR" not in result.stdout, result.stdout + result.stderr
    return result.stdout


def recap_changed(output):
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    return sum(int(count) for count in re.findall(r"\bchanged=(\d+)", plain))


@pytest.fixture
def tiers_apart(group):
    # CI time is short: these runbooks run where the tiers have hosts of their own (the ha
    # scenario), every play of theirs included; the all-in-one host would add nothing.
    if len(group("all")) == 1:
        pytest.skip("tested where the tiers have hosts of their own (ha scenario)")


def test_status_prints_every_tier_and_changes_nothing(tiers_apart, pool_names):
    # In --check mode: every row must still be read (its reads run in check mode too) and
    # nothing may be reported as a change; a plain run executes the very same tasks.
    run = runbook("status.yml", "--check")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert recap_changed(run.stdout) == 0
    out = run.stdout
    assert "AOF on, last write ok" in out and "firewall active" in out
    for pool in pool_names:
        assert f"celery-worker@{pool}.service: active/running" in out
    assert "healthy, " in out and "result subscriber up" in out
    assert "UNHEALTHY" not in out and "DOWN" not in out


def _held_message(redis_host, worker_config, admin, web_hosts):
    """A real task message as the default pool holds it: sent with a countdown, then read back."""
    status, body = http_get(web_hosts[0], web_url(web_hosts[0], "/healthz"))
    assert status == 200, body
    url = web_url(web_hosts[0], "/api/tasks/stackdemo.tasks.add")
    status, body = http_request(web_hosts[0], url, {"args": [20, 22], "countdown": 15})
    assert status == 202, body
    task_id = body["task_id"]
    held = ("--scan", "--pattern", "unacked@default@*")
    for _ in range(100):
        for key in admin_cli(redis_host, worker_config, admin, *held).split():
            for entry in admin_cli(redis_host, worker_config, admin, "HVALS", key).splitlines():
                stored = json.loads(entry)
                if stored[0]["headers"]["id"] == task_id:
                    return stored
        time.sleep(0.2)
    pytest.fail(f"task {task_id} never showed up in an unacked hash")


def _renamed(stored, task_id):
    """The same message as a new task: its own id, delivery tag and no countdown."""
    message, exchange, routing_key = json.loads(json.dumps(stored))
    message["headers"].update(id=task_id, root_id=task_id, eta=None)
    message["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
    return message, exchange, routing_key


def test_restore_orphans_refuses_a_live_node_and_an_unconfirmed_run(worker_hosts, pool_names):
    live = f"{pool_names[0]}@{worker_hosts[0].inventory_name}"
    refused = runbook("restore-orphans.yml", "-e", f"restore_orphans_node={live}", "-e", "confirm=yes")
    assert refused.returncode != 0 and "requeues its own" in refused.stdout
    unconfirmed = runbook("restore-orphans.yml", "-e", f"restore_orphans_node={GONE}")
    assert unconfirmed.returncode != 0 and "confirm=yes" in unconfirmed.stdout


def test_restore_orphans_requeues_what_a_dead_node_held(
    tiers_apart, redis_host, worker_config, admin, web_hosts
):
    stored = _held_message(redis_host, worker_config, admin, web_hosts)
    unacked_id, in_flight_id = str(uuid.uuid4()), str(uuid.uuid4())
    message, exchange, routing_key = _renamed(stored, unacked_id)
    raw_in_flight = json.dumps(_renamed(stored, in_flight_id)[0])

    def cli(*command):
        return admin_cli(redis_host, worker_config, admin, *command)

    # What a node leaves when its host dies: one delivered message, one still in flight.
    cli(
        "HSET",
        f"unacked@{GONE}",
        message["properties"]["delivery_tag"],
        json.dumps([message, exchange, routing_key]),
    )
    cli("ZADD", f"unacked_index@{GONE}", "1", message["properties"]["delivery_tag"])
    cli("LPUSH", f"inflight@{GONE}@{routing_key}", raw_in_flight)

    run = runbook("restore-orphans.yml", "-e", f"restore_orphans_node={GONE}", "-e", "confirm=yes")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "requeued 1 in-flight and 1 unacknowledged" in run.stdout
    assert recap_changed(run.stdout) == 1
    for key in (f"unacked@{GONE}", f"unacked_index@{GONE}", f"inflight@{GONE}@{routing_key}"):
        assert cli("EXISTS", key).strip() == "0", key

    for task_id in (unacked_id, in_flight_id):
        status, body = http_get(web_hosts[0], web_url(web_hosts[0], f"/api/tasks/{task_id}?wait=30"))
        assert status == 200 and body["state"] == "SUCCESS", body
        assert body["result"] == 42

    again = runbook("restore-orphans.yml", "-e", f"restore_orphans_node={GONE}", "-e", "confirm=yes")
    assert again.returncode == 0 and recap_changed(again.stdout) == 0
