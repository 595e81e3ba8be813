"""What must hold after faults: data across Redis restarts, units that never give up, and a
converge that brings back a unit left failed."""

import os
import shlex
import subprocess
import time
import uuid

import pytest
from conftest import local_fact
from stackcheck import http_get, redis_cli_path, redis_endpoint


def _as_admin(redis_host, worker_config, admin, script):
    """Feed Redis CLI commands (one per line) as the admin user, in the broker database."""
    address, port, _, _, db = redis_endpoint(worker_config["broker_url"])
    command = (
        f"printf %s {shlex.quote(script)} | REDISCLI_AUTH={shlex.quote(admin[1])} "
        f"{redis_cli_path(redis_host)} --no-auth-warning -h {address} -p {port} --user {admin[0]} -n {db}"
    )
    return redis_host.check_output(command)


def test_transactions_survive_a_redis_restart(redis_host, redis_unit, worker_config, admin):
    # kombu's unacknowledged-message bookkeeping and Celery's results are written in MULTI/EXEC;
    # Redis replays the AOF at start and must not drop them.
    _as_admin(redis_host, worker_config, admin, "MULTI\nSET stack-aof-probe kept\nEXEC\n")
    redis_host.check_output(f"systemctl restart {redis_unit}")
    deadline = time.monotonic() + 60
    while "PONG" not in _as_admin(redis_host, worker_config, admin, "PING\n"):
        assert time.monotonic() < deadline, "Redis did not come back"
        time.sleep(1)
    try:
        assert _as_admin(redis_host, worker_config, admin, "GET stack-aof-probe\n").strip() == "kept"
    finally:
        _as_admin(redis_host, worker_config, admin, "DEL stack-aof-probe\n")


def _our_units(group):
    units = {(h, local_fact(h, "stack_redis")["service"] + ".service") for h in group("redis")}
    for host in group("celery_workers"):
        fact = local_fact(host, "stack_celery_worker")
        units |= {(host, unit) for unit in fact["units"]}
        if fact["beat"]:
            units.add((host, "celery-beat.service"))
    for host in group("web"):
        units |= {(host, unit) for unit in local_fact(host, "stack_web")["units"]}
    return sorted(units, key=lambda pair: (pair[0].inventory_name, pair[1]))


def test_units_retry_for_ever(group):
    # A unit waiting for Redis or for its address must never reach a start limit and stay down.
    for host, unit in _our_units(group):
        shown = host.check_output(f"systemctl show -p Restart -p StartLimitIntervalUSec {unit}")
        assert sorted(shown.splitlines()) == ["Restart=always", "StartLimitIntervalUSec=0"], unit


def test_a_converge_brings_back_a_unit_left_failed(group, inventory):
    web = group("web")[0]
    if len(inventory.get_hosts("all")) > 1:
        pytest.skip("one converge is enough: proved on the all-in-one host")
    unit = local_fact(web, "stack_web")["units"][0]
    # A configuration error (exit status 2) is the one failure systemd does not retry.
    web.check_output("cp /etc/stackdemo/web.json /root/web.json.good && echo '{' > /etc/stackdemo/web.json")
    web.run(f"systemctl restart {unit}")
    deadline = time.monotonic() + 30
    while web.run(f"systemctl is-failed {unit}").stdout.strip() != "failed":
        assert time.monotonic() < deadline, f"{unit} did not fail"
        time.sleep(1)
    converge = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "site.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = converge.stdout + converge.stderr
    web.run("rm -f /root/web.json.good")
    assert converge.returncode == 0, output[-3000:]
    resets = [part.split("TASK [")[0] for part in output.split("Reset units left failed")[1:]]
    assert any(f"changed: [{web.inventory_name}] => (item={unit})" in part for part in resets), output[-3000:]
    assert web.service(unit).is_running


LATE_ADDRESS = "192.0.2.77"  # TEST-NET-1: added to the host's loopback only, never routed


def test_web_waits_for_an_address_that_comes_up_late(web_hosts):
    web = web_hosts[0]
    fact = local_fact(web, "stack_web")
    if web.run(f"ip address add {LATE_ADDRESS}/32 dev lo && ip address del {LATE_ADDRESS}/32 dev lo").rc:
        pytest.skip("this host may not change its addresses (no CAP_NET_ADMIN)")
    port = max(fact["ports"]) + 100
    # A unit name of its own: the journal of an earlier run must not answer for this one.
    unit = f"stack-late-address-probe-{uuid.uuid4().hex[:8]}"
    unit_file = web.file("/etc/systemd/system/stackdemo-web@.service").content_string
    program = next(line for line in unit_file.splitlines() if line.startswith("ExecStart=")).split()[0][10:]
    # The deployed web, as its own user, with the deployed configuration, on an address not up yet.
    web.check_output(
        f"systemd-run --unit {unit} --uid {fact['user']} --gid {fact['user']}"
        f" --setenv STACKDEMO_CONFIG=/etc/stackdemo/web.json"
        f" {program} --address {LATE_ADDRESS} --port {port}"
    )
    try:
        _wait(lambda: "not configured on this host yet" in _journal(web, unit), "the wait to be logged")
        web.check_output(f"ip address add {LATE_ADDRESS}/32 dev lo")
        _wait(lambda: f"listening on {LATE_ADDRESS}" in _journal(web, unit), "the web to listen", 40)
        status, body = http_get(web, f"http://{LATE_ADDRESS}:{port}/healthz")
        assert status == 200, body
    finally:
        web.run(f"systemctl stop {unit}; ip address del {LATE_ADDRESS}/32 dev lo")


def _journal(host, unit):
    return host.check_output(f"journalctl -u {unit} -o cat --no-pager")


def _wait(predicate, what, bound=20):
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)
