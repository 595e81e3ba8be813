"""Scale the worker tier out to a new host and back in, through the runbooks.

The ha scenario's outsider (a host the firewall keeps off Redis) becomes a worker host for
the length of this module: it is added to celery_workers by an inventory file of the test's own,
as an operator adds a host to theirs, then retired.
"""

import json
import re
import time

import pytest
from stackcheck import http_get, http_request, redis_endpoint, web_url
from test_firewall import can_connect
from test_runbooks import recap_changed, runbook


@pytest.fixture(scope="module")
def newcomer(group, tmp_path_factory):
    outsiders = group("outsiders")
    if not outsiders:
        pytest.skip("scaling is tested on the ha scenario, whose outsider becomes a worker host")
    host = outsiders[0]
    extra = tmp_path_factory.mktemp("scale") / "added.yml"
    extra.write_text(
        json.dumps({"all": {"children": {"celery_workers": {"hosts": {host.inventory_name: {}}}}}})
    )
    return host, str(extra)


def _main_pids(hosts):
    """MainPID of every unit of ours on these hosts: a restart changes it."""
    pids = {}
    for host in hosts:
        units = host.check_output(
            "systemctl list-units --plain --no-legend --state=active"
            " 'redis*' 'valkey*' 'celery-worker@*' 'stackdemo-web@*.service' | awk '{print $1}'"
        ).split()
        for unit in units:
            pids[(host.inventory_name, unit)] = host.check_output(f"systemctl show -p MainPID --value {unit}")
    return pids


def _reaches_redis(host, worker_config):
    address, port = redis_endpoint(worker_config["broker_url"])[:2]
    return can_connect(host, address, port)


def _tasks_done_on(host, task_ids):
    journal = host.check_output("journalctl -u 'celery-worker@*' -o cat --no-pager")
    return [task_id for task_id in task_ids if task_id in journal]


def test_scale_out_then_in_restarts_nothing_else(
    newcomer, redis_host, worker_hosts, web_hosts, worker_config, pool_names
):
    host, added = newcomer
    name = host.inventory_name
    others = list({h.inventory_name: h for h in [redis_host, *worker_hosts, *web_hosts]}.values())
    before = _main_pids(others)
    assert not _reaches_redis(host, worker_config)

    refused = runbook("scale-out.yml", "-e", "scale_out_hosts=stranger")
    assert refused.returncode != 0 and "scale_out_hosts" in refused.stdout

    out = runbook("scale-out.yml", "-i", added, "-e", f"scale_out_hosts={name}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _reaches_redis(host, worker_config)
    for pool in pool_names:
        assert host.service(f"celery-worker@{pool}").is_running
    # The new host takes its share of the work.
    web = web_hosts[0]
    task_ids = []
    for n in range(40):
        status, body = http_get(web, web_url(web, f"/add?x={n}&y=1"))
        assert status == 200 and body["result"] == n + 1, body
        task_ids.append(body["task_id"])
    assert _tasks_done_on(host, task_ids)
    assert _main_pids(others) == before

    # The only worker hosts cannot all leave; nothing is retired without confirmation.
    everyone = ",".join([h.inventory_name for h in worker_hosts] + [name])
    alone = runbook("scale-in.yml", "-i", added, "-e", f"scale_in_hosts={everyone}", "-e", "confirm=yes")
    assert alone.returncode != 0 and "no worker host would be left" in alone.stdout
    unconfirmed = runbook("scale-in.yml", "-i", added, "-e", f"scale_in_hosts={name}")
    assert unconfirmed.returncode != 0 and "confirm=yes" in unconfirmed.stdout
    assert recap_changed(alone.stdout) == recap_changed(unconfirmed.stdout) == 0

    # Countdown tasks: the pools take them at once and hold them until they are due, so the
    # retiring pools leave some behind, which must run elsewhere.
    url = web_url(web, "/api/tasks/stackdemo.tasks.add")
    held = [http_request(web, url, {"args": [n, 100], "countdown": 6})[1]["task_id"] for n in range(12)]
    inn = runbook("scale-in.yml", "-i", added, "-e", f"scale_in_hosts={name}", "-e", "confirm=yes")
    assert inn.returncode == 0, inn.stdout[-3000:] + inn.stderr[-3000:]
    requeued = re.findall(r"requeued (\d+) in-flight and\s+(\d+) unacknowledged", inn.stdout)
    assert len(requeued) == len(pool_names), inn.stdout[-3000:]
    for n, task_id in enumerate(held):
        status, body = http_get(web, web_url(web, f"/api/tasks/{task_id}?wait=30"))
        assert status == 200 and body["state"] == "SUCCESS" and body["result"] == n + 100, body
    for pool in pool_names:
        unit = host.service(f"celery-worker@{pool}")
        assert not unit.is_running and not unit.is_enabled
    deadline = time.monotonic() + 20
    while _reaches_redis(host, worker_config):
        assert time.monotonic() < deadline, "the firewall still lets the retired host in"
        time.sleep(1)
    assert _main_pids(others) == before
    status, body = http_get(web, web_url(web, "/add?x=2&y=3"))
    assert status == 200 and body["result"] == 5
