"""The drain runbook: the front stops accepting, every queued and held task runs, then the workers stop.

Run on the all-in-one host only (the default scenario): site.yml brings it back within seconds
there, and the ha scenario already spends its time on the rolling and scaling runbooks.
"""

import json
import os
import subprocess
import sys

import pytest
from stackcheck import http_get, http_request, redis_cli, web_fact, web_url
from test_firewall import can_connect
from test_runbooks import PROJECT, recap_changed, runbook


@pytest.fixture
def all_in_one(redis_host, worker_hosts, web_hosts):
    names = {host.inventory_name for host in [redis_host, *worker_hosts, *web_hosts]}
    if len(names) != 1:
        pytest.skip("the drain is tested on the all-in-one host (the default scenario)")
    return redis_host


def _site():
    inventory = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    env = {key: value for key, value in os.environ.items() if key != "ANSIBLE_FORCE_COLOR"}
    env.update(ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory]
    return subprocess.run(
        [*command, os.path.join(PROJECT, "site.yml")], capture_output=True, text=True, env=env, timeout=600
    )


def test_drain_runs_everything_then_stops_and_site_resumes(all_in_one, worker_config, admin, pool_names):
    host = all_in_one
    fact = web_fact(host)
    unconfirmed = runbook("drain.yml")
    assert unconfirmed.returncode != 0 and "confirm=yes" in unconfirmed.stdout
    assert recap_changed(unconfirmed.stdout) == 0

    url = web_url(host, "/api/tasks/stackdemo.tasks.add")
    # Held by the pools until due: the drain must wait for them.
    held = [http_request(host, url, {"args": [n, 1000], "countdown": 5})[1]["task_id"] for n in range(5)]
    queued = [http_request(host, url, {"args": [n, 2000]})[1]["task_id"] for n in range(5)]

    drained = runbook("drain.yml", "-e", "confirm=yes")
    assert drained.returncode == 0, drained.stdout[-3000:] + drained.stderr[-3000:]
    for port in fact["ports"]:
        assert not can_connect(host, fact["address"], port)
    for pool in pool_names:
        assert not host.service(f"celery-worker@{pool}").is_running
    for task_id, total in [
        *zip(held, range(1000, 1005), strict=True),
        *zip(queued, range(2000, 2005), strict=True),
    ]:
        stored = redis_cli(
            host,
            worker_config["result_backend"],
            "GET",
            f"celery-task-meta-{task_id}",
            user=admin[0],
            password=admin[1],
        )
        meta = json.loads(stored.stdout)
        assert meta["status"] == "SUCCESS" and meta["result"] == total, meta

    resumed = _site()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    status, body = http_get(host, web_url(host, "/add?x=2&y=3"))
    assert status == 200 and body["result"] == 5
