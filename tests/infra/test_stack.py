"""The whole request path on real hosts: Redis, Celery workers, the Tornado front."""

import pytest
from conftest import local_fact
from stackcheck import http_get, redis_cli, redis_endpoint, web_fact, web_url


def test_redis_is_enabled_and_running(redis_host, redis_unit):
    service = redis_host.service(redis_unit)
    assert service.is_enabled
    assert service.is_running


def test_redis_listens_on_the_service_address_only(redis_host, worker_config):
    address, port, *_ = redis_endpoint(worker_config["broker_url"])
    assert redis_host.socket(f"tcp://{address}:{port}").is_listening
    assert redis_host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not redis_host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_redis_refuses_an_unauthenticated_client(worker_hosts, worker_config):
    # From a client host, no credentials: the default user is disabled.
    result = redis_cli(worker_hosts[0], worker_config["broker_url"], "PING", user="")
    assert "PONG" not in result.stdout
    assert "NOAUTH" in result.stdout + result.stderr


def test_redis_accepts_the_worker_user(worker_hosts, worker_config):
    result = redis_cli(worker_hosts[0], worker_config["broker_url"], "PING")
    assert result.stdout.strip() == "PONG"


def test_broker_and_backend_use_the_seeds_databases(worker_config):
    assert redis_endpoint(worker_config["broker_url"])[4] == 1
    assert redis_endpoint(worker_config["result_backend"])[4] == 0


def test_worker_pools_are_enabled_and_running(worker_hosts, pool_names):
    assert pool_names
    for host in worker_hosts:
        assert local_fact(host, "stack_celery_worker")["pools"] == pool_names
        for pool in pool_names:
            service = host.service(f"celery-worker@{pool}")
            assert service.is_enabled
            assert service.is_running


def test_workers_run_as_their_own_unprivileged_user(worker_hosts, pool_names):
    for host in worker_hosts:
        user = local_fact(host, "stack_celery_worker")["user"]
        assert user != "root"
        processes = host.process.filter(comm="celery")
        assert processes, "no celery process found"
        assert {p.user for p in processes} == {user}
        # Root in a container may not read another user's /proc/PID/environ: check the sources.
        unit_environment = host.check_output(f"systemctl show -p Environment celery-worker@{pool_names[0]}")
        assert "C_FORCE_ROOT" not in unit_environment
        found = host.run("grep -rl C_FORCE_ROOT /etc/stackdemo /etc/systemd/system")
        assert found.rc == 1, found.stdout


def test_web_processes_are_enabled_and_listening(web_hosts, inventory):
    assert web_hosts
    for host in web_hosts:
        fact = web_fact(host)
        wanted = inventory.get_variables(host.inventory_name).get("tornado_web_ports")
        if wanted is not None:
            assert fact["ports"] == wanted
        assert fact["ports"] and len(fact["units"]) == len(fact["ports"])
        for unit in fact["units"] + fact["sockets"]:
            service = host.service(unit)
            assert service.is_enabled
            assert service.is_running
        listening = host.socket.get_listening_sockets()
        for port in fact["ports"]:
            # Exactly the service address: never a wildcard, never another interface.
            assert [s for s in listening if s.startswith("tcp://") and s.endswith(f":{port}")] == [
                f"tcp://{fact['address']}:{port}"
            ]
        processes = host.process.filter(comm="stackdemo-web")
        assert len(processes) == len(fact["ports"])
        assert {p.user for p in processes} == {fact["user"]}


@pytest.mark.parametrize(("x", "y", "total"), [(2, 3, 5), (10, 2, 12), (1.5, 2, 3.5)])
def test_a_request_is_answered_by_a_worker(web_hosts, x, y, total):
    host = web_hosts[0]
    status, body = http_get(host, web_url(host, f"/add?x={x}&y={y}"))
    assert status == 200
    assert body["result"] == total
    assert body["task_id"]


@pytest.mark.parametrize("query", ["?x=2", "?x=two&y=3", ""])
def test_bad_input_is_a_400_with_a_json_error(web_hosts, query):
    host = web_hosts[0]
    status, body = http_get(host, web_url(host, f"/add{query}"))
    assert status == 400
    assert body["error"]
