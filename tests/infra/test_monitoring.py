"""Flower on the hosts of the flower group, through the monitoring Redis user.

Runs wherever the inventory has Flower hosts (byo: one host with a project of its own; ha: the
web host, with Sentinels). Flower must show every pool and the tasks they ran, answer only with
its password, serve queue depths and worker status on /metrics, be out of reach of sources the
inventory does not allow, and, after the failovers where there are any, still see the workers
and their new tasks: its events and the queue-depth reads follow the new primary.
"""

import base64
import json
import os
import socket

import pytest
from conftest import local_fact, service_address
from stackcheck import admin_cli, http_get, http_request, http_text, web_url


@pytest.fixture(scope="module")
def flower_host(group):
    hosts = group("flower")
    if not hosts:
        pytest.skip("no Flower host in this inventory")
    return hosts[0]


@pytest.fixture(scope="module")
def flower(flower_host, secrets_dir):
    """GET(path, auth=True) -> (status, body) against the deployed Flower, and its local fact."""
    fact = local_fact(flower_host, "stack_flower")
    with open(os.path.join(secrets_dir, "flower")) as secret:
        login = base64.b64encode(f"ops:{secret.read().strip()}".encode()).decode()
    base = f"http://{fact['address']}:{fact['port']}"

    def get(path, auth=True, host=flower_host):
        return http_text(host, base + path, headers={"Authorization": f"Basic {login}"} if auth else None)

    return get, fact


@pytest.fixture(scope="module")
def pool_nodes(group, inventory):
    """Every pool's Celery node name, POOL@HOSTNAME, on every worker host."""
    nodes = set()
    for host in group("celery_workers"):
        hostname = host.check_output("hostname")
        pools = inventory.get_variables(host.inventory_name)["celery_worker_pools"]
        nodes |= {f"{pool['name']}@{hostname}" for pool in pools}
    return nodes


def _metric_lines(metrics, name):
    return [line for line in metrics.splitlines() if line.startswith(name)]


def test_flower_runs_hardened_as_its_own_user(flower_host, flower):
    _, fact = flower
    assert flower_host.service("celery-flower").is_running
    assert flower_host.service("celery-flower").is_enabled
    show = "systemctl show --value -p {} celery-flower"
    assert flower_host.check_output(show.format("User")) == fact["user"] == "celery-flower"
    assert flower_host.check_output(show.format("NoNewPrivileges")) == "yes"
    assert flower_host.check_output(show.format("ProtectSystem")) == "strict"
    # The basic-auth pair is in an environment file only root and Flower read, never on the
    # command line (which any local user can read).
    env = flower_host.file("/etc/stackdemo/flower.env")
    assert env.mode == 0o640 and env.user == "root" and env.group == "celery-flower"
    exec_start = flower_host.check_output(show.format("ExecStart"))
    assert "basic_auth" not in exec_start.lower()
    # Read only: no action from its pages or its API, even with the password.
    assert "--read_only=true" in exec_start


def test_flower_answers_on_its_port_with_its_password_only(flower):
    get, _ = flower
    assert get("/healthcheck", auth=False)[0] == 200
    assert get("/", auth=False)[0] == 401
    assert get("/api/workers", auth=False)[0] == 401
    status, page = get("/")
    assert status == 200 and "Flower" in page


def test_flower_sees_every_pool_and_the_tasks_they_ran(flower, pool_nodes, web_hosts):
    get, _ = flower
    # A task of the front's own list, so the scenario's app (demo or project) has it.
    allowed = json.loads(web_hosts[0].file("/etc/stackdemo/web.json").content_string)["web"]["allowed_tasks"]
    add = next(name for name in allowed if name.endswith(".add"))
    status, body = http_request(web_hosts[0], web_url(web_hosts[0], f"/api/tasks/{add}"), {"args": [20, 22]})
    assert status == 202, body
    assert http_get(web_hosts[0], web_url(web_hosts[0], f"/api/tasks/{body['task_id']}?wait=30"))[0] == 200
    # Inspected through the pidbox (the workers' read-only remote control).
    status, workers = get("/api/workers?refresh=1")
    assert status == 200, workers
    assert set(json.loads(workers)) == pool_nodes
    # Heard from the workers' events.
    status, tasks = get("/api/tasks?limit=10000")
    assert status == 200
    task = json.loads(tasks).get(body["task_id"])
    assert task and task["state"] == "SUCCESS" and task["name"] == add, task


def test_flower_metrics_carry_queue_depths_and_workers_online(flower, pool_nodes, inventory, group):
    get, _ = flower
    status, metrics = get("/metrics", auth=False)
    assert status == 200
    assert "stackdemo_celery_broker_up 1.0" in metrics.splitlines()
    queues = set()
    for host in group("celery_workers"):
        for pool in inventory.get_variables(host.inventory_name)["celery_worker_pools"]:
            queues |= set(pool["queues"])
    depths = _metric_lines(metrics, "stackdemo_celery_queue_messages{")
    assert {line.split('"')[1] for line in depths} >= queues, depths
    for node in pool_nodes:
        assert f'flower_worker_online{{worker="{node}"}} 1.0' in metrics, node
    # prometheus_client's process metrics, for free.
    assert _metric_lines(metrics, "process_resident_memory_bytes ")


def test_flower_is_reachable_from_the_allowed_sources_only(flower, group, inventory):
    get, fact = flower
    flower_vars = inventory.get_variables(group("flower")[0].inventory_name)
    allowed = flower_vars.get("celery_flower_allowed_sources", [])
    # The controller is no allowed source: its packets are dropped, not answered.
    with pytest.raises(OSError):
        socket.create_connection((fact["address"], fact["port"]), timeout=3).close()
    # An allowed host of the inventory (ha: the worker host) is answered.
    for host in group("all"):
        address = service_address(inventory, host, host.inventory_name)
        if address in allowed:
            assert get("/healthcheck", auth=False, host=host)[0] == 200, host.inventory_name


@pytest.mark.after_faults
def test_flower_still_follows_the_workers_after_the_faults(flower, pool_nodes, web_hosts):
    """Runs after the failovers (ha): the events, the inspect replies and the depth reads moved
    to the new primary with everyone else."""
    test_flower_sees_every_pool_and_the_tasks_they_ran(flower, pool_nodes, web_hosts)
    get, _ = flower
    status, metrics = get("/metrics", auth=False)
    assert status == 200 and "stackdemo_celery_broker_up 1.0" in metrics.splitlines()
    for node in pool_nodes:
        assert f'flower_worker_online{{worker="{node}"}} 1.0' in metrics, node


@pytest.mark.after_faults
def test_no_acl_denial_after_monitoring(group, secrets_dir):
    """Flower, its events and its depth reads needed nothing beyond the monitoring user's grant."""
    with open(os.path.join(secrets_dir, "redis-admin")) as secret:
        password = secret.read().strip()
    denials = {}
    for host in group("redis"):
        fact = local_fact(host, "stack_redis")
        result = admin_cli(host, fact["port"], (fact["users"]["admin"], password), "--json", "ACL", "LOG")
        assert result.rc == 0, result.stderr
        entries = json.loads(result.stdout or "[]")
        if entries:
            keep = ("reason", "object", "username")
            denials[host.inventory_name] = [{k: e.get(k) for k in keep} for e in entries]
    assert not denials, json.dumps(denials, indent=1)
