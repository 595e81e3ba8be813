"""Redis failover under load: the Sentinels promote a replica and nothing the front accepted is lost.

Runs where the inventory has Sentinels (the ha scenario), after every other test. A planned
switchover (playbooks/ops/switchover.yml) and three faults of the primary, each under the chaos
suite's load through the front (clients submitting add(i, 1), half awaiting the answer, and a
prober timing the gaps in /add):
- its redis-server killed (kill -9; systemd starts it again 5 s later);
- its host powered off (podman kill), started again once a replica has taken over;
- its host cut off from every other stack host (nftables drops both ways), healed once a
  replica has taken over; the controller still reaches it, as an operator's console would.
Each time: the failover time (fault to the Sentinels naming another primary), requests the
front failed, and tasks lost (every accepted task id must reach SUCCESS with the right result)
or run twice. Then the tier must settle (one primary, every replica linked to it), and a
converge must change nothing and leave the primary where the Sentinels put it.
The table is printed; with $HA_FIGURES set it is also written there as JSON.
"""

import functools
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import local_fact, read_json, service_address, ssh_argv
from stackcheck import admin_cli, primary_endpoint, redis_cli_path, redis_endpoint
from test_runbooks import playbook, recap_changed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "chaos"))
from chaos import Stack, run_fault  # noqa: E402  (the chaos suite's load and bookkeeping)

pytestmark = pytest.mark.disruptive

FAILOVER_BOUND = 90
SETTLE_BOUND = 180
# Once the Sentinels named another primary, how long the old one stays down or cut off: long
# enough for every client to have moved, as a real outage would last.
HOLD_AFTER_FAILOVER = 10


class Tier:
    """The replicated Redis tier seen from the web host, as the stack's clients see it."""

    def __init__(self, inventory, group, web_host, secrets_dir):
        self.web = web_host
        self.addresses = {service_address(inventory, h, h.inventory_name) for h in group("all")}
        self.config = read_json(web_host, "/etc/stackdemo/web.json")
        self.hosts = {service_address(inventory, h, h.inventory_name): h for h in group("redis")}
        self.sentinel_hosts = group("redis_sentinel")
        fact = local_fact(group("redis")[0], "stack_redis")
        self.service, self.port = fact["service"], fact["port"]
        with open(os.path.join(secrets_dir, "redis-admin")) as secret:
            self.admin = fact["users"]["admin"], secret.read().strip()

    def primary(self):
        """The host the Sentinels name as primary, or None while none answers."""
        try:
            address, _ = primary_endpoint(self.web, self.config)
        except AssertionError:
            return None
        return self.hosts.get(address)

    def role(self, host):
        """ROLE of a server, asked on its own host: (role, primary address, link state)."""
        try:
            result = admin_cli(host, self.port, self.admin, "ROLE")
        except RuntimeError:
            # SSH itself failed (a host still booting): no role yet. Not re-raised: the
            # error would print the command, password included.
            return ()
        lines = result.stdout.split() if result.rc == 0 else []
        return tuple(lines[:4]) if lines[:1] == ["slave"] else tuple(lines[:1])

    def cli(self, host, *command):
        """A command as the admin user on a server, asked on its own host: its stripped output."""
        result = admin_cli(host, self.port, self.admin, *command)
        assert result.rc == 0, f"{command[0]} failed on {host.inventory_name}"
        return result.stdout.strip()

    def settled(self):
        """One primary, named by the Sentinels, and every other server linked to it."""
        primary = self.primary()
        if primary is None or self.role(primary) != ("master",):
            return None
        address = next(a for a, h in self.hosts.items() if h is primary)
        for host in self.hosts.values():
            if host is not primary and self.role(host) != ("slave", address, str(self.port), "connected"):
                return None
        return primary

    def sentinel_events(self, seconds):
        """What every reachable Sentinel logged lately (votes, elections, aborts): why no failover."""
        logs = []
        for host in self.sentinel_hosts:
            try:
                unit = local_fact(host, "stack_redis_sentinel")["service"]
                journal = f"journalctl -u {unit} --since=-{seconds}s -o short-precise --no-pager"
                lines = host.check_output(f"{journal} | tail -n 40")
            except (AssertionError, RuntimeError) as exc:
                lines = f"unreachable: {type(exc).__name__}"
            logs.append(f"--- {host.inventory_name}\n{lines}")
        return "\n".join(logs)

    def wait_settled(self):
        deadline = time.monotonic() + SETTLE_BOUND
        while time.monotonic() < deadline:
            primary = self.settled()
            if primary is not None:
                return primary
            time.sleep(2)
        roles = {host.inventory_name: self.role(host) for host in self.hosts.values()}
        raise AssertionError(f"the Redis tier did not settle: {roles}")


class FailoverWatch:
    """Polls the Sentinels (from the web host) and notes when they name another primary."""

    def __init__(self, tier, old_primary):
        self.tier, self.old = tier, old_primary
        self.started = time.monotonic()
        self.new_primary = None
        self.failover_seconds = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.is_set():
            primary = self.tier.primary()
            if primary is not None and primary is not self.old:
                self.new_primary = primary
                self.failover_seconds = round(time.monotonic() - self.started, 1)
                return
            time.sleep(0.5)

    def from_now(self):
        """Count the failover time from now: the fault, not the load's start."""
        self.started = time.monotonic()
        return self

    def wait(self, bound=FAILOVER_BOUND):
        self._thread.join(bound)
        if self.new_primary is None:
            raise AssertionError(f"no failover within {bound} s:\n{self.tier.sentinel_events(bound + 30)}")

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def tier(inventory, group, web_hosts, worker_hosts, secrets_dir):
    if len(group("redis_sentinel")) < 3:
        pytest.skip("failover is tested where the inventory has Sentinels (the ha scenario)")
    # The web host that runs no worker: the load and the Sentinel watch come from there.
    workers = {host.inventory_name for host in worker_hosts}
    web = next((host for host in web_hosts if host.inventory_name not in workers), web_hosts[0])
    return Tier(inventory, group, web, secrets_dir)


@pytest.fixture(scope="module")
def chaos_stack(tier, inventory, worker_hosts):
    fact = read_json(tier.web, "/etc/ansible/facts.d/stack_web.fact")
    worker = worker_hosts[0].inventory_name
    return Stack(
        {
            "web": f"http://{fact['address']}:{fact['ports'][0]}",
            # The worker host's journal counts how often each task ran.
            "ssh": ssh_argv(inventory, worker),
            "pool": "default",
        }
    )


def _sentinel_cli(host, address, port, user, password, *command):
    args = [redis_cli_path(host), "-h", address, "-p", str(port), "--no-auth-warning"]
    if user:
        args += ["--user", user]
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    result = host.run(env + "timeout 5 " + shlex.join(args + list(command)))
    return result.stdout + result.stderr


def _sentinels(tier):
    """(address, port) of every Sentinel the clients are given."""
    return [redis_endpoint(url)[:2] for url in tier.config["broker_url"].split(";")]


def test_sentinels_are_refused_to_outsiders_and_open_to_clients(tier, group, worker_hosts):
    from test_firewall import can_connect

    for address, port in _sentinels(tier):
        for host in worker_hosts + [tier.web]:
            assert can_connect(host, address, port), (host.inventory_name, address)
        for host in group("outsiders"):
            assert not can_connect(host, address, port), (host.inventory_name, address)


def test_sentinel_clients_may_only_find_the_primary(tier):
    client = tier.config["sentinel"]
    name = client["master_name"]
    for address, port in _sentinels(tier):
        ask = functools.partial(_sentinel_cli, tier.web, address, port)
        assert "NOAUTH" in ask(None, None, "SENTINEL", "MASTERS")
        assert "WRONGPASS" in ask(client["username"], "x" * 32, "PING")
        assert ask(
            client["username"], client["password"], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name
        ).split()
        for command in (
            ("SENTINEL", "FAILOVER", name),
            ("SENTINEL", "SET", name, "quorum", "1"),
            ("ACL", "LIST"),
            ("SENTINEL", "CONFIG", "GET", "*"),
            ("SHUTDOWN",),
        ):
            assert "NOPERM" in ask(client["username"], client["password"], *command), command
    # These refusals were the point; the last test reads every ACL LOG for the stack's own.
    user, password = tier.admin
    for address, port in _sentinels(tier):
        assert "OK" in _sentinel_cli(tier.web, address, port, user, password, "ACL", "LOG", "RESET")


def test_sentinel_units_are_hardened_and_keep_their_state_apart(group):
    for host in group("redis_sentinel"):
        fact = local_fact(host, "stack_redis_sentinel")
        unit = f"{fact['service']}.service"
        assert host.service(unit).is_running and host.service(unit).is_enabled
        shown = dict(
            line.split("=", 1)
            for line in host.check_output(
                f"systemctl show {unit} -p User -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths "
                "-p CapabilityBoundingSet -p PrivateTmp"
            ).splitlines()
        )
        assert shown["User"] != "root" and shown["NoNewPrivileges"] == "yes"
        assert shown["ProtectSystem"] == "strict" and shown["PrivateTmp"] == "yes"
        assert shown["ReadWritePaths"].split() == [os.path.dirname(fact["state_file"])]
        assert shown["CapabilityBoundingSet"] == ""
        state = host.file(fact["state_file"])
        assert state.user == shown["User"] and state.mode == 0o600


FIGURES = []


def _kill_server(tier, primary, watch):
    primary.run(f"systemctl kill --signal=KILL --kill-whom=main {tier.service}.service")


def _power_off(tier, primary, watch):
    subprocess.run(["podman", "kill", primary.inventory_name], check=True, capture_output=True, timeout=60)
    watch.wait()
    time.sleep(HOLD_AFTER_FAILOVER)
    subprocess.run(["podman", "start", primary.inventory_name], check=True, capture_output=True, timeout=120)


def _partition(tier, primary, watch):
    own = next(a for a, h in tier.hosts.items() if h is primary)
    elements = ", ".join(sorted(tier.addresses - {own}))
    rules = (
        "table inet stack_partition {\n"
        f"  set peers {{ type ipv4_addr; elements = {{ {elements} }} }}\n"
        "  chain input { type filter hook input priority -200; ip saddr @peers drop; }\n"
        "  chain output { type filter hook output priority -200; ip daddr @peers drop; }\n"
        "}\n"
    )
    primary.run_expect([0], f"printf %s {shlex.quote(rules)} | nft -f -")
    try:
        watch.wait()
        time.sleep(HOLD_AFTER_FAILOVER)
    finally:
        primary.run_expect([0], "nft delete table inet stack_partition")


def _switchover(tier, primary, watch):
    run = playbook("playbooks/ops/switchover.yml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


FAULTS = {
    "planned switchover (runbook)": _switchover,
    "kill -9 the primary's redis-server": _kill_server,
    "power off the primary's host": _power_off,
    "cut the primary off the network": _partition,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_failover_under_load_loses_no_task(fault, tier, chaos_stack):
    old = tier.wait_settled()
    watch = FailoverWatch(tier, old)
    try:
        outcome = run_fault(chaos_stack, fault, lambda: FAULTS[fault](tier, old, watch.from_now()))
    finally:
        watch.stop()
    new = tier.wait_settled()
    row = {
        "fault": fault,
        "old primary": old.inventory_name,
        "new primary": new.inventory_name,
        "failover s": watch.failover_seconds,
        "sent": outcome.sent,
        "accepted": outcome.accepted,
        "refused": outcome.refused,
        "lost": len(outcome.lost),
        "dup": len(outcome.duplicated),
        "outage s": outcome.outage_seconds,
        "recovery s": outcome.recovery_seconds,
    }
    FIGURES.append(row)
    print(json.dumps(row))
    if os.environ.get("HA_FIGURES"):
        with open(os.environ["HA_FIGURES"], "w") as handle:
            json.dump(FIGURES, handle, indent=2)
    assert outcome.accepted > 0
    assert not outcome.lost, f"{len(outcome.lost)} accepted task(s) never finished: {outcome.lost[:5]}"
    assert not outcome.duplicated, f"ran twice: {outcome.duplicated[:5]}"
    assert not outcome.wrong, f"wrong results: {outcome.wrong[:5]}"
    assert not outcome.units_down, outcome.units_down
    if fault == "planned switchover (runbook)":
        assert outcome.refused == 0, "a planned switchover must not fail a request"
    if fault != "kill -9 the primary's redis-server":
        # Down for longer than the Sentinels wait: a replica must have taken over.
        assert new is not old


def test_a_converge_after_the_failovers_changes_nothing_and_keeps_the_primary(tier):
    # The Redis tier (replication and Sentinel included): the runbook tests before this one
    # leave the app tiers on another release on purpose; their second converge is proven on
    # the all-in-one host (molecule/default).
    before = tier.wait_settled()
    run = playbook("site.yml", "--tags", "redis", timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert recap_changed(run.stdout) == 0, run.stdout[-4000:]
    assert tier.wait_settled() is before


def test_a_replica_rebuilt_empty_rejoins_with_the_primary_data(tier):
    """rejoin.yml on a replica whose data is gone (a replaced disk); the primary is refused."""
    primary = tier.wait_settled()
    replica = next(host for host in tier.hosts.values() if host is not primary)
    marker = f"stack:rejoin:{uuid.uuid4()}"
    assert tier.cli(primary, "SET", marker, "kept", "EX", "900") == "OK"
    data_dir = tier.cli(replica, "CONFIG", "GET", "dir").split()[-1]
    replica.run_expect([0], f"systemctl stop {tier.service}.service")
    replica.run_expect([0], f"find {shlex.quote(data_dir)} -mindepth 1 -delete")

    refused = playbook("playbooks/ops/rejoin.yml", "-e", f"rejoin_host={primary.inventory_name}")
    assert refused.returncode != 0 and "is the primary" in refused.stdout, refused.stdout[-2000:]
    assert recap_changed(refused.stdout) == 0

    run = playbook("playbooks/ops/rejoin.yml", "-e", f"rejoin_host={replica.inventory_name}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert tier.wait_settled() is primary
    assert tier.cli(replica, "GET", marker) == "kept"


def test_no_acl_denial_on_any_data_node_or_sentinel(tier, group):
    """Every tier's grant sufficed through the failovers: ACL LOG is empty everywhere."""
    servers = [(host, tier.port) for host in group("redis")]
    servers += [(host, local_fact(host, "stack_redis_sentinel")["port"]) for host in group("redis_sentinel")]
    denials = {}
    for host, port in servers:
        result = admin_cli(host, port, tier.admin, "--json", "ACL", "LOG")
        assert result.rc == 0, f"ACL LOG failed on {host.inventory_name}:{port}"
        entries = json.loads(result.stdout or "[]")
        if entries:
            keep = ("count", "reason", "context", "object", "username", "age-seconds", "client-info")
            denials[f"{host.inventory_name}:{port}"] = [{k: e.get(k) for k in keep} for e in entries]
    assert not denials, json.dumps(denials, indent=1)
