"""The password rotation runbook (playbooks/ops/rotate-passwords.yml) under a steady load.

A load of clients submits tasks through the front while a tier's Redis password is rotated as an
operator rotates it: the new password goes into the inventory (here the secret file the lab
inventory generated), then the runbook runs once, so the stack is left as the inventory says. Every
task the front accepted must reach SUCCESS with the right result; requests the front failed are
counted. A watcher reads the rotated user's passwords in Redis and in users.acl meanwhile: both
the old and the new one must have been accepted at the same time.

Run by the ha scenario only (Redis, workers and web on their own hosts): the rotation
restarts a tier's processes, which on an all-in-one host share it with Redis; elsewhere it skips.
"""

import hashlib
import json
import os
import secrets
import sys
import threading
import time

import pytest
from stackcheck import direct_config, redis_cli, web_fact
from test_runbooks import recap_changed, runbook

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "chaos"))
from chaos import Load, Stack  # noqa: E402  (the chaos suite's load)


@pytest.fixture(scope="module", autouse=True)
def separate_hosts(inventory):
    """Skip unless Redis has a host of its own, apart from the worker and web hosts."""
    redis = set(inventory.get_hosts("redis"))
    clients = set(inventory.get_hosts("celery_workers")) | set(inventory.get_hosts("web"))
    if redis & clients:
        pytest.skip("rotation is tested where Redis, workers and web have hosts of their own (ha scenario)")


def _read(host, path):
    return json.loads(host.file(path).content_string)


def _hash(password):
    return hashlib.sha256(password.encode()).hexdigest()


class Rotation:
    """One tier's rotation: run the runbook under load, tally the requests and the tasks."""

    def __init__(self, tier, user, redis_host, admin, client_host, config):
        self.tier, self.user, self.redis_host, self.admin = tier, user, redis_host, admin
        # The endpoint only: the password in it is the one being rotated.
        client_config = direct_config(client_host, _read(client_host, config))
        self.url, self.backend_url = client_config["broker_url"], client_config["result_backend"]

    def hashes_live(self):
        admin_user, admin_password = self.admin
        result = redis_cli(
            self.redis_host, self.url, "ACL", "GETUSER", self.user, user=admin_user, password=admin_password
        )
        lines = result.stdout.split()
        return lines[lines.index("passwords") + 1 : lines.index("commands")]

    def hashes_on_disk(self):
        fact = json.loads(self.redis_host.file("/etc/ansible/facts.d/stack_redis.fact").content_string)
        line = self.redis_host.check_output(f"grep '^user {self.user} ' {fact['conf_dir']}/users.acl")
        return [word[1:] for word in line.split() if word.startswith("#")]

    def run(self, stack):
        """The runbook under load: (run, tasks' outcome, failed requests, most hashes seen at once)."""
        seen = {"live": 0, "disk": 0}
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    seen["live"] = max(seen["live"], len(self.hashes_live()))
                    seen["disk"] = max(seen["disk"], len(self.hashes_on_disk()))
                except (AssertionError, ValueError):  # a read cut short: the next one counts
                    pass
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        # A prober as patient as an awaited client: pools restarting delay answers, not fail them.
        with Load(stack, clients=2, pause=0.2, probe_timeout=45) as load:
            time.sleep(1)
            watcher.start()
            started = time.monotonic()
            run = runbook("rotate-passwords.yml", "-e", f"rotate_tier={self.tier}")
            seconds = time.monotonic() - started
            done.set()
            watcher.join(10)
            time.sleep(1)
        outcome = self.settle(load.accepted)
        failed = load.refused + len(load.probe_failures)
        print(
            f"rotate {self.tier}: {seconds:.0f} s, {load.sent} sent, {len(load.accepted)} accepted, "
            f"{outcome['finished']} finished, {len(outcome['lost'])} lost, {failed} failed requests "
            f"({load.refused} refused, {len(load.probe_failures)} failed probes; "
            f"slowest /add {load.slowest_probe:.1f} s), "
            f"at most {seen['live']} password(s) live, {seen['disk']} in users.acl"
        )
        return run, outcome, failed, seen

    def settle(self, accepted, bound=120):
        """Wait until every accepted task has a result: finished, lost (none after `bound` s), wrong.

        Results are read from the result backend, 500 at a time (one MGET each), not one
        request per task through the front.
        """
        pending, wrong = dict(accepted), []
        admin_user, admin_password = self.admin
        deadline = time.monotonic() + bound
        while pending and time.monotonic() < deadline:
            ids = list(pending)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                keys = [f"celery-task-meta-{task_id}" for task_id in chunk]
                result = redis_cli(
                    self.redis_host,
                    self.backend_url,
                    "--json",
                    "MGET",
                    *keys,
                    user=admin_user,
                    password=admin_password,
                )
                for task_id, raw in zip(chunk, json.loads(result.stdout), strict=True):
                    meta = json.loads(raw) if raw else {}
                    if meta.get("status") == "SUCCESS":
                        if meta.get("result") != pending[task_id]:
                            wrong.append(task_id)
                        del pending[task_id]
            if pending:
                time.sleep(1)
        return {"finished": len(accepted) - len(pending), "lost": sorted(pending), "wrong": wrong}

    def admin_cli(self, *command):
        admin_user, admin_password = self.admin
        return redis_cli(self.redis_host, self.url, *command, user=admin_user, password=admin_password)

    def acl_log(self):
        return json.loads(self.admin_cli("--json", "ACL", "LOG").stdout or "[]")

    def login(self, password):
        # From the Redis host: client hosts have no redis-cli.
        return redis_cli(self.redis_host, self.url, "PING", user=self.user, password=password).stdout.strip()


@pytest.fixture(scope="module")
def stack(web_hosts):
    fact = web_fact(web_hosts[0])
    return Stack({"web": f"http://{fact['address']}:{fact['ports'][0]}"})


def _rotation(tier, group, redis_host, admin, redis_fact):
    user = redis_fact["users"][tier]
    # The Redis endpoint only, from a client's config (Flower's has no result backend: the web's).
    config = "/etc/stackdemo/worker.json" if tier == "worker" else "/etc/stackdemo/web.json"
    client = group("celery_workers" if tier == "worker" else "web")[0]
    return Rotation(tier, user, redis_host, admin, client, config)


def _rotate(rotation, secret_path, stack):
    """A new password into the inventory, then the runbook: the count of failed requests."""
    with open(secret_path) as secret:
        old_password = secret.read().strip()
    new_password = secrets.token_hex(16)
    with open(secret_path, "w") as secret:
        secret.write(new_password + "\n")
    run, outcome, failed, seen = rotation.run(stack)
    if run.returncode != 0:
        # The clients still hold the old password: the inventory must say so again.
        with open(secret_path, "w") as secret:
            secret.write(old_password + "\n")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert rotation.login(new_password) == "PONG"
    # The refused login below is logged by Redis as a denial, which the last test of the ha scenario
    # would report: the log is checked empty first, and cleared after it.
    assert rotation.acl_log() == []
    assert rotation.login(old_password) != "PONG"
    assert [entry["reason"] for entry in rotation.acl_log()] == ["auth"]
    assert rotation.admin_cli("ACL", "LOG", "RESET").stdout.strip() == "OK"
    assert rotation.hashes_live() == rotation.hashes_on_disk() == [_hash(new_password)]
    assert new_password not in run.stdout + run.stderr and old_password not in run.stdout + run.stderr
    # Both passwords were accepted at once, live and on disk, then only the new one.
    assert seen == {"live": 2, "disk": 2}
    assert recap_changed(run.stdout) > 0
    assert outcome["finished"] > 0
    assert not outcome["lost"] and not outcome["wrong"], outcome
    return failed


def test_rotating_the_worker_password_loses_no_task_and_fails_no_request(
    stack, group, redis_host, admin, secrets_dir, redis_fact
):
    rotation = _rotation("worker", group, redis_host, admin, redis_fact)
    assert _rotate(rotation, os.path.join(secrets_dir, "redis-worker"), stack) == 0


def test_rotating_the_web_password_loses_no_task_and_fails_no_request(
    stack, group, redis_host, admin, secrets_dir, redis_fact
):
    rotation = _rotation("web", group, redis_host, admin, redis_fact)
    # Web processes restart in turn behind sockets that keep accepting.
    assert _rotate(rotation, os.path.join(secrets_dir, "redis-web"), stack) == 0


def test_rotating_the_monitoring_password_keeps_flower_and_the_load_going(
    stack, group, redis_host, admin, secrets_dir, redis_fact
):
    if "monitor" not in redis_fact["users"] or not group("flower"):
        pytest.skip("no monitoring user and Flower in this inventory")
    rotation = _rotation("monitor", group, redis_host, admin, redis_fact)
    assert _rotate(rotation, os.path.join(secrets_dir, "redis-monitor"), stack) == 0
    # Flower was restarted with the new password (test_monitoring checks it still sees the pools).
    flower = group("flower")[0]
    assert flower.service("celery-flower").is_running
    with open(os.path.join(secrets_dir, "redis-monitor")) as secret:
        password = secret.read().strip()
    # A bare name, so a failure prints no password.
    holds_new_password = password in flower.file("/etc/stackdemo/flower.json").content_string
    assert holds_new_password
