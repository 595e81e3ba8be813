"""The Redis port is reachable from its clients only."""

import shlex

import pytest
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


def test_rules_allow_exactly_the_client_hosts(redis_host, worker_hosts, web_hosts):
    backend_rules = redis_host.run(
        "nft list table inet stack_firewall 2>/dev/null || iptables -S STACK-FIREWALL"
    ).stdout
    for host in worker_hosts + web_hosts:
        address = host.interface("eth0").addresses[0]
        assert address in backend_rules
    assert "drop" in backend_rules.lower()


def test_rules_survive_a_reboot_through_an_enabled_unit(redis_host):
    assert redis_host.service("stack-firewall").is_enabled
