"""The Redis port is reachable from its clients only, and the rules come back at every boot."""

import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import service_address
from stackcheck import redis_endpoint


def can_connect(host, address, port):
    probe = f"exec 3<>/dev/tcp/{address}/{port}"
    return host.run(f"timeout 3 bash -c {shlex.quote(probe)}").rc == 0


def test_clients_reach_redis(worker_hosts, web_hosts, worker_config):
    address, port, *_ = redis_endpoint(worker_config["broker_url"])
    for host in worker_hosts + web_hosts:
        assert can_connect(host, address, port)


def test_a_host_outside_the_allow_list_cannot_reach_redis(group, worker_config):
    outsiders = group("outsiders")
    if not outsiders:
        pytest.skip("this scenario has no host outside the allow list")
    address, port, *_ = redis_endpoint(worker_config["broker_url"])
    for host in outsiders:
        assert not can_connect(host, address, port)


def allowed_sources(redis_host, port):
    """(sources accepted on `port`, whether every other source is then dropped), from the live rules."""
    nft = redis_host.run("nft list table inet stack_firewall")
    if nft.rc == 0:
        sources, dropped = set(), False
        for line in nft.stdout.splitlines():
            if f"dport {port} " not in line + " ":
                continue
            found = re.search(r"saddr (\{ ([^}]*) \}|(\S+))", line)
            if found and line.rstrip().endswith("accept"):
                sources |= {s.strip() for s in (found.group(2) or found.group(3)).split(",")}
            elif line.rstrip().endswith("drop") and not found:
                dropped = True
        return sources, dropped
    rules = redis_host.check_output("iptables -S STACK-FIREWALL").splitlines()
    mine = [r for r in rules if f"--dport {port} " in r + " "]
    accepted = [r for r in mine if " -s " in r and r.endswith("RETURN")]
    sources = {re.search(r"-s (\S+?)(/32)? ", r).group(1) for r in accepted}
    dropped = any(" -s " not in r and r.endswith("DROP") for r in mine)
    return sources, dropped


def test_rules_allow_exactly_the_client_hosts(redis_host, group, inventory, worker_config):
    _, port, *_ = redis_endpoint(worker_config["broker_url"])
    tiers = ("celery_workers", "web", "redis", "redis_sentinel")
    clients = {h.inventory_name: h for tier in tiers for h in group(tier)}
    expected = {service_address(inventory, host, name) for name, host in clients.items()}
    sources, dropped = allowed_sources(redis_host, port)
    assert sources == expected
    assert dropped, "no drop rule for the other sources"


BOOT_MARKER = "echo \"$(cat /proc/sys/kernel/random/boot_id) $(cut -d' ' -f22 /proc/1/stat)\""


def restart_records():
    """Boot markers the restart side effect recorded before restarting, per host.

    A marker is the kernel's boot id and the start time of PID 1: a container shares its host's
    boot id, so only the second part tells a restarted container apart.
    """
    directory = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "restarts"
    return {p.name: p.read_text().strip() for p in directory.glob("*")} if directory.is_dir() else {}


def test_rules_survive_a_reboot_through_an_enabled_unit(redis_host, worker_config):
    before = restart_records().get(redis_host.inventory_name)
    if before is None:
        pytest.skip("this scenario did not restart its Redis host")
    assert redis_host.check_output(BOOT_MARKER) != before
    unit = redis_host.service("stack-firewall")
    assert unit.is_enabled and unit.is_running
    # No converge ran since the restart: rules in place now were loaded by the boot itself.
    _, port, *_ = redis_endpoint(worker_config["broker_url"])
    sources, dropped = allowed_sources(redis_host, port)
    assert sources and dropped
