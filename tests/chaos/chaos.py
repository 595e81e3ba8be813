"""Faults under a steady load, one at a time: is any accepted task lost or run twice?

Runs on the controller against converged lab hosts. A load of clients keeps
submitting ``add(i, 1)`` through the front (half with ``POST /api/tasks``, half
awaiting the answer with ``GET /add``) while one fault is injected; every task
the front accepted (HTTP 202, or an /add answer carrying a task id) must then
reach SUCCESS with the right result, and run to completion exactly once
(counted in the workers' journal by task id). A prober times the gap in answered ``/add`` requests.

Columns: sent/accepted/refused by the front (a refusal is an answer: the
client knows); finished = accepted tasks that reached SUCCESS with the right
result; lost = accepted and never finished; dup = run to completion more than
once; outage = from the fault to the last unanswered probe; recovery = from the
end of the fault (the restart command returned, Redis started again) to the
first health check and /add answered again.

Usage: chaos.py SPEC.json [--only FAULT ...] [--json OUT]
SPEC: {"web": "http://ADDR:PORT", "ssh": ["ssh", ..., "root@ADDR"],
       "container": "podman name of the host", "redis_service": "redis-server",
       "redis_cli": "/usr/bin/redis-cli", "pool": "default", "web_user": "celery-web",
       "broker_db": 1}
The web user's password comes from $CHAOS_WEB_PASSWORD (junk is pushed with it).
"""

import argparse
import collections
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ADD = "stackdemo.tasks.add"
SETTLE_SECONDS = 180
# Countdowns of tasks sent before each fault: held by a worker while the fault happens.
EARLY_COUNTDOWNS = (5, 20)
JUNK = [b"garbage", b"\xff\xfe", b"[1]", b"{}", b'{"properties": {}}', b"null", b"1e999"]


@dataclass
class Outcome:
    fault: str
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    finished: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    outage_seconds: float = 0.0
    recovery_seconds: float = 0.0
    units_down: list[str] = field(default_factory=list)


class Stack:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        url = urlsplit(spec["web"])
        self.host, self.port = url.hostname, url.port

    def request(self, method: str, path: str, body: dict | None = None, timeout=35):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = json.dumps(body) if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ssh(self, command: str, check: bool = True, timeout: float = 180) -> str:
        env_password = os.environ.get("CHAOS_WEB_PASSWORD", "")
        result = subprocess.run(
            [*self.spec["ssh"], command],
            input=env_password,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{command!r} failed: {result.stderr.strip()}")
        return result.stdout

    def units(self) -> list[str]:
        # The Redis unit when it runs on this host (an all-in-one host).
        redis = f" '{self.spec['redis_service']}.service'" if self.spec.get("redis_service") else ""
        out = self.ssh(
            "systemctl list-units --plain --no-legend --all "
            f"'celery-worker@*' 'celery-beat.service' 'stackdemo-web@*'{redis}"
        )
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def units_not_active(self) -> list[str]:
        down = []
        for unit in self.units():
            state = self.ssh(f"systemctl is-active {unit}", check=False).strip()
            if state != "active":
                down.append(f"{unit}={state}")
        return down

    def runs_per_task(self, since: str) -> collections.Counter:
        out = self.ssh(
            f"journalctl --since '{since}' -u 'celery-worker@*' -o cat --no-pager",
            timeout=300,
        )
        pattern = re.compile(rf"{re.escape(ADD)}\[([0-9a-f-]{{36}})\] succeeded")
        return collections.Counter(pattern.findall(out))


class Load:
    """Clients submitting add(i, 1), and a prober timing the gaps in /add."""

    def __init__(self, stack: Stack, clients: int = 4, pause: float = 0.1, probe_timeout: float = 10) -> None:
        self.stack = stack
        self.clients = clients
        self.pause = pause
        # A probe unanswered within this counts as a gap; the slowest answer is kept.
        self.probe_timeout = probe_timeout
        self.slowest_probe = 0.0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted: dict[str, int] = {}
        self.sent = 0
        self.refused = 0
        self.probe_failures: list[float] = []
        self.probe_successes: list[float] = []
        self.counter = 0

    def submit_held(self, countdowns: tuple[int, ...]) -> None:
        """Tasks a worker holds, unacknowledged, until their ETA: across the fault."""
        for countdown in countdowns:
            body = {"args": [-countdown, 1], "countdown": countdown}
            status, reply = self.stack.request("POST", f"/api/tasks/{ADD}", body)
            if status != 202:
                raise RuntimeError(f"held task refused before the fault: {reply!r}")
            with self.lock:
                self.sent += 1
                self.accepted[json.loads(reply)["task_id"]] = 1 - countdown

    def _send(self, value: int, awaited: bool) -> str | None:
        """Submit add(value, 1); the task id if the front took it."""
        try:
            if awaited:
                # /add answers 200 with the result, or 504 with the task id to ask about later.
                status, body = self.stack.request("GET", f"/add?x={value}&y=1", timeout=45)
                taken = status in (200, 502, 504)
            else:
                status, body = self.stack.request(
                    "POST", f"/api/tasks/{ADD}", {"args": [value, 1]}, timeout=15
                )
                taken = status == 202
            return json.loads(body).get("task_id") if taken else None
        except (OSError, ValueError):
            return None

    def _submit_loop(self, awaited: bool) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.counter += 1
                value = self.counter
                self.sent += 1
            task_id = self._send(value, awaited)
            with self.lock:
                if task_id:
                    self.accepted[task_id] = value + 1
                else:
                    self.refused += 1
            time.sleep(self.pause)

    def _probe_loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status, body = self.stack.request("GET", "/add?x=1&y=1", timeout=self.probe_timeout)
                ok = status == 200 and json.loads(body).get("result") == 2
            except (OSError, ValueError):
                ok = False
            self.slowest_probe = max(self.slowest_probe, time.monotonic() - started)
            (self.probe_successes if ok else self.probe_failures).append(started)
            time.sleep(0.5)

    def __enter__(self) -> "Load":
        # Half the clients submit and go, half await the result through /add.
        self.threads = [
            threading.Thread(target=self._submit_loop, args=(index % 2 == 1,), daemon=True)
            for index in range(self.clients)
        ]
        self.threads.append(threading.Thread(target=self._probe_loop, daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(40)


def _fault_actions(stack: Stack) -> dict:
    spec = stack.spec
    pool = f"celery-worker@{spec['pool']}.service"
    redis_unit = f"{spec['redis_service']}.service"

    def kill_pool_main() -> None:
        stack.ssh(f"systemctl kill --signal=KILL --kill-whom=main {pool}")

    def kill_pool_child() -> None:
        # A child busy with a task: start one that sleeps, then kill every child.
        stack.request(
            "POST",
            "/api/tasks/stackdemo.tasks.sleep_then_echo",
            {"args": ["held", 5]},
        )
        time.sleep(1)
        main = stack.ssh(f"systemctl show --property=MainPID --value {pool}").strip()
        stack.ssh(f"pkill --signal KILL --parent {main}")

    def restart_redis() -> None:
        stack.ssh(f"systemctl restart {redis_unit}")

    def stop_redis_30s() -> None:
        stack.ssh(f"systemctl stop {redis_unit}")
        time.sleep(30)
        stack.ssh(f"systemctl start {redis_unit}")

    def restart_host() -> None:
        subprocess.run(
            ["podman", "restart", "--time", "120", spec["container"]],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def junk_in_queue() -> None:
        # Pushed with the web's own credentials, as any producer could.
        pushes = " ".join(f"'{item.decode('latin-1')}'" for item in JUNK)
        stack.ssh(
            "read -r REDISCLI_AUTH; export REDISCLI_AUTH; "
            f"{spec.get('redis_cli', 'redis-cli')} --no-auth-warning -h {stack.host} "
            f"--user {spec['web_user']} -n {spec['broker_db']} lpush {spec.get('queue', 'celery')} {pushes}"
        )

    return {
        "kill -9 pool main process": kill_pool_main,
        "kill -9 pool child mid-task": kill_pool_child,
        "restart Redis": restart_redis,
        "stop Redis for 30 s": stop_redis_30s,
        "restart the whole host": restart_host,
        "junk in the queue": junk_in_queue,
    }


def _healthy(stack: Stack) -> bool:
    try:
        status, _ = stack.request("GET", "/healthz", timeout=5)
        add_status, body = stack.request("GET", "/add?x=1&y=1", timeout=10)
    except OSError:
        return False
    return status == 200 and add_status == 200 and json.loads(body)["result"] == 2


def _wait_healthy(stack: Stack, bound: float = 400) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if _healthy(stack):
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError("the stack did not come back")


def _settle(stack: Stack, accepted: dict[str, int], outcome: Outcome) -> None:
    pending = dict(accepted)
    deadline = time.monotonic() + SETTLE_SECONDS
    while pending and time.monotonic() < deadline:
        for task_id in list(pending):
            try:
                status, body = stack.request("GET", f"/api/tasks/{task_id}?wait=0")
            except OSError:
                time.sleep(1)
                continue
            meta = json.loads(body) if status == 200 else {}
            if meta.get("state") == "SUCCESS":
                if meta.get("result") != pending[task_id]:
                    outcome.wrong.append(task_id)
                del pending[task_id]
        if pending:
            time.sleep(2)
    outcome.lost = sorted(pending)
    outcome.finished = len(accepted) - len(pending)


def run_fault(stack: Stack, name: str, action) -> Outcome:
    outcome = Outcome(fault=name)
    _wait_healthy(stack)
    since = stack.ssh("date '+%Y-%m-%d %H:%M:%S'").strip()
    with Load(stack) as load:
        load.submit_held(EARLY_COUNTDOWNS)
        time.sleep(3)
        fault_at = time.monotonic()
        action()
        outcome.recovery_seconds = round(_wait_healthy(stack), 1)
        time.sleep(3)
    failures = [t for t in load.probe_failures if t >= fault_at]
    outcome.outage_seconds = round((max(failures) - fault_at + 0.5) if failures else 0.0, 1)
    outcome.sent, outcome.refused = load.sent, load.refused
    outcome.accepted = len(load.accepted)
    _settle(stack, load.accepted, outcome)
    runs = stack.runs_per_task(since)
    outcome.duplicated = sorted(t for t in load.accepted if runs[t] > 1)
    outcome.units_down = stack.units_not_active()
    return outcome


def print_table(outcomes: list[Outcome]) -> None:
    head = (
        f"{'fault':<30} {'sent':>5} {'accepted':>8} {'refused':>7} {'finished':>8} "
        f"{'lost':>4} {'dup':>3} {'outage s':>8} {'recovery s':>10}"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        print(
            f"{o.fault:<30} {o.sent:>5} {o.accepted:>8} {o.refused:>7} {o.finished:>8} "
            f"{len(o.lost):>4} {len(o.duplicated):>3} {o.outage_seconds:>8} "
            f"{o.recovery_seconds:>10}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    with open(args.spec) as handle:
        stack = Stack(json.load(handle))
    actions = _fault_actions(stack)
    names = args.only or list(actions)
    outcomes = []
    for name in names:
        print(f"fault: {name}", flush=True)
        outcomes.append(run_fault(stack, name, actions[name]))
    print_table(outcomes)
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump([o.__dict__ for o in outcomes], handle, indent=2)
    bad = [o.fault for o in outcomes if o.lost or o.duplicated or o.wrong or o.units_down or not o.accepted]
    for o in outcomes:
        for label, items in (
            ("lost", o.lost),
            ("duplicated", o.duplicated),
            ("wrong result", o.wrong),
            ("not active", o.units_down),
        ):
            if items:
                print(f"{o.fault}: {label}: {', '.join(items[:10])}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
