"""Rolling restart and upgrade runbooks under a user's load through every web host."""

import http.client
import itertools
import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from stackcheck import web_fact
from test_runbooks import PROJECT, recap_changed, runbook


class FrontLoad:
    """Clients sending GET /add round-robin to every web port, one connection per request.

    A new connection per request is what a restart hurts most: every request needs the port
    to accept. Each answer must be the right sum from a worker.
    """

    def __init__(self, endpoints, clients=6):
        self.endpoints = endpoints
        self.outcomes = Counter()
        self.failures = []
        self._stop = threading.Event()
        self._next = itertools.count()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self):
        while not self._stop.is_set():
            n = next(self._next)
            address, port = self.endpoints[n % len(self.endpoints)]
            connection = http.client.HTTPConnection(address, port, timeout=45)
            try:
                connection.request("GET", f"/add?x={n}&y=1")
                response = connection.getresponse()
                body = response.read()
                if response.status == 200 and json.loads(body)["result"] == n + 1:
                    self.outcomes["answered"] += 1
                else:
                    self._fail(f"HTTP {response.status} from {address}:{port}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self._fail(f"{type(exc).__name__} from {address}:{port}: {exc}")
            finally:
                connection.close()

    def _fail(self, what):
        self.outcomes["failed"] += 1
        self.failures.append(what)

    def wait_for_answers(self, count, bound=60):
        deadline = time.monotonic() + bound
        target = self.outcomes["answered"] + count
        while self.outcomes["answered"] < target:
            assert time.monotonic() < deadline, f"load stalled: {self.outcomes}"
            time.sleep(0.2)


def _endpoints(web_hosts):
    return [(web_fact(host)["address"], port) for host in web_hosts for port in web_fact(host)["ports"]]


def _main_pids(host, units):
    return {unit: host.check_output(f"systemctl show --property=MainPID --value {unit}") for unit in units}


@pytest.fixture
def two_web_hosts(web_hosts):
    if len(web_hosts) < 2:
        pytest.skip("a rolling web restart needs two web hosts (the ha scenario)")
    return web_hosts


def _release(host):
    return host.file("/opt/stackdemo/venv/INSTALLED").content_string


def _new_release(tmp_path):
    """The app's source with one comment more: a new release, as an operator's next commit."""
    source = tmp_path / "stackdemo"
    shutil.copytree(
        Path(PROJECT) / "files" / "stackdemo", source, ignore=shutil.ignore_patterns("tests", "*cache*")
    )
    init = source / "src" / "stackdemo" / "__init__.py"
    init.write_text(init.read_text() + f"# release rolled out by a test at {time.time()}\n")
    return source


def test_rolling_restart_then_upgrade_fail_no_request(two_web_hosts, worker_hosts, tmp_path):
    app_hosts = list({host.inventory_name: host for host in [*worker_hosts, *two_web_hosts]}.values())
    web_units = {host: web_fact(host)["units"] for host in two_web_hosts}
    pool_units = {
        host: json.loads(host.file("/etc/ansible/facts.d/stack_celery_worker.fact").content_string)["units"]
        for host in worker_hosts
    }
    units = {**web_units, **pool_units}
    before = {host: _main_pids(host, host_units) for host, host_units in units.items()}
    releases = {host: _release(host) for host in app_hosts}
    with FrontLoad(_endpoints(two_web_hosts)) as load:
        load.wait_for_answers(30)
        restart = runbook("rolling-restart.yml", "-e", "rolling_restart_tiers=workers,web")
        load.wait_for_answers(30)
        restarted = {host: _main_pids(host, host_units) for host, host_units in units.items()}
        # A release of the app: its tiers only, as an operator ships one.
        upgrade = runbook(
            "upgrade.yml", "--tags", "workers,web", "-e", f"stackdemo_app_source={_new_release(tmp_path)}"
        )
        load.wait_for_answers(30)
    for run in (restart, upgrade):
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert load.outcomes["failed"] == 0, (load.outcomes, load.failures[:10])
    upgraded = {host: _main_pids(host, host_units) for host, host_units in units.items()}
    for host, pids in before.items():
        for unit, pid in pids.items():
            assert pid != restarted[host][unit] != upgraded[host][unit] != "0", (
                unit,
                pid,
                restarted,
                upgraded,
            )
    assert all(_release(host) != release for host, release in releases.items())
    # One host at a time: each batch of one host announces its own task header.
    assert restart.stdout.count("TASK [tornado_web : Restart each port's process in turn]") == len(
        two_web_hosts
    )
    assert upgrade.stdout.count("TASK [stackdemo_app : Ensure this release's wheels are installed]") == len(
        app_hosts
    )


def test_rolling_restart_refuses_an_unknown_tier():
    run = runbook("rolling-restart.yml", "-e", "rolling_restart_tiers=web,database")
    assert run.returncode != 0 and "rolling_restart_tiers" in run.stdout
    assert recap_changed(run.stdout) == 0
